"""A trained model knows its domain: elements outside it are refused everywhere (calculator,
predict, md, relax, eval, check), stress of a model that never saw stress warns, and the domain
is printed by ``sciml info`` and ``sciml check``."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write

from sciml.calculator import SciMLCalculator
from cli_testing import one_error_line
from sciml.cli.main import main
from sciml.inference import load_model
from sciml.io import load_checkpoint
from sciml.models.domain import DomainError, ModelDomain

pytestmark = pytest.mark.slow  # every test uses the models trained by the module fixtures

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"

CONFIG = """
model: {{name: egnn, options: {{hidden: 16, layers: 2, cutoff: {cutoff}}}}}
data: {{path: {data}}}
split: {{train: {train}, valid: 5, test: 5, seed: 0}}
loss: {{energy: 1.0, forces: 10.0, stress: {stress}}}
epochs: 1
batch_size: 10
output_dir: {out}
"""


def train(folder: Path, frames, cutoff: float, stress: float) -> Path:
    write(folder / "data.extxyz", frames)
    config = folder / "config.yaml"
    config.write_text(CONFIG.format(data=folder / "data.extxyz", out=folder / "run", cutoff=cutoff, stress=stress,
                                    train=len(frames) - 10))
    assert main(["train", str(config)]) == 0
    return folder / "run" / "best.pt"


@pytest.fixture(scope="module")
def molecules(tmp_path_factory) -> Path:
    """An EGNN trained one epoch on 40 ethanol frames (H, C, O; no cells, no stress)."""
    return train(tmp_path_factory.mktemp("molecules"), read(DATA, ":50"), 4.0, 0.0)


@pytest.fixture(scope="module")
def metals(tmp_path_factory) -> Path:
    """An EGNN trained one epoch on 20 rattled, strained Cu/Au crystals labelled by EMT (with stress)."""
    rng = np.random.default_rng(0)
    frames = []
    for n in range(30):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.1 * rng.random(), cubic=True)
        atoms.numbers[rng.random(len(atoms)) < 0.5] = 79
        atoms.set_cell(atoms.cell * (1 + 0.02 * rng.standard_normal((3, 3))), scale_atoms=True)
        atoms.rattle(0.05, seed=n)
        atoms.calc = EMT()
        atoms.get_stress()
        frames.append(atoms)
    return train(tmp_path_factory.mktemp("metals"), frames, 5.0, 1.0)


def iron():
    return bulk("Fe", "bcc", a=2.87, cubic=True)


def test_checkpoint_records_the_training_domain(molecules, metals):
    run = molecules.parent
    saved = load_checkpoint(molecules)["domain"]
    splits = json.loads((run / "splits.json").read_text())
    train_frames = [read(run.parent / "data.extxyz", index=int(k)) for k in splits["train"]]
    per_atom = [a.get_potential_energy() / len(a) for a in train_frames]
    assert saved["elements"] == [1, 6, 8]
    assert (saved["periodic"], saved["molecules"]) == (0, len(train_frames))
    assert saved["labels"] == {"energy": "eV", "forces": "eV/Å"}
    assert saved["ranges"]["energy_per_atom"] == pytest.approx([min(per_atom), max(per_atom)], rel=1e-6)
    domain = load_model(metals).domain
    assert domain.elements == (29, 79) and domain.molecules == 0 and domain.periodic == 20
    assert domain.labels == {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3"}
    assert domain.source == str(metals)
    assert ModelDomain.from_dict(domain.to_dict(), domain.source) == domain


def test_calculator_refuses_elements_outside_the_domain(molecules, metals):
    crystal = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    crystal.calc = SciMLCalculator.from_checkpoint(str(molecules))
    with pytest.raises(DomainError, match=rf"Cu outside the domain of {molecules} \(trained on H C O\)"):
        crystal.get_potential_energy()
    fe = iron()
    fe.calc = SciMLCalculator.from_checkpoint(str(metals))
    with pytest.raises(DomainError, match="Fe outside"):
        fe.get_forces()
    fe.calc = SciMLCalculator.from_checkpoint(str(metals), allow_unknown_elements=True)
    with pytest.warns(UserWarning, match="Fe outside .*predicting anyway"):
        assert np.isfinite(fe.get_potential_energy())


def test_stress_of_a_model_never_trained_on_cells_or_stress_warns(molecules, metals):
    box = molecule("CH3CH2OH")
    box.cell, box.pbc = np.eye(3) * 12.0, True
    box.center()
    box.calc = SciMLCalculator.from_checkpoint(str(molecules))
    with pytest.warns(UserWarning, match="never trained on periodic structures"):
        box.get_stress()
    box.calc.reset()
    with warnings.catch_warnings():  # once per calculator
        warnings.simplefilter("error")
        box.get_stress()
    write(box_file := molecules.parent / "box.extxyz", box)
    with pytest.warns(UserWarning, match="never trained on periodic structures"):
        main(["predict", "--checkpoint", str(molecules), str(box_file)])
    crystal = bulk("Cu", "fcc", a=3.65, cubic=True)
    crystal.calc = SciMLCalculator.from_checkpoint(str(metals))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert crystal.get_stress().shape == (6,)


def test_every_command_refuses_unknown_elements_with_one_line(metals, capsys, tmp_path):
    ckpt = str(metals)
    poscar = tmp_path / "POSCAR"
    write(poscar, iron(), format="vasp")
    labelled = iron()
    labelled.calc = SinglePointCalculator(labelled, energy=-8.3, forces=np.zeros((2, 3)), stress=np.zeros(6))
    write(tmp_path / "fe.extxyz", labelled)
    out = tmp_path / "out"
    commands = {
        "predict": ["predict", "--checkpoint", ckpt, str(poscar), "--output", f"{out}.csv"],
        "md": ["md", ckpt, str(poscar), "--steps", "2", "--output", f"{out}.extxyz"],
        "relax": ["relax", ckpt, str(poscar), "--output", f"{out}.extxyz"],
        "eval": ["eval", "--checkpoint", ckpt, str(tmp_path / "fe.extxyz")],
        "check": ["check", ckpt, str(poscar)],
    }
    for name, argv in commands.items():
        one_error_line(capsys, main(argv), "Fe outside the domain", ckpt, "--allow-unknown-elements")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["POSCAR", "fe.extxyz"], name
    with pytest.warns(UserWarning, match="Fe outside"):
        assert main(commands["predict"] + ["--allow-unknown-elements"]) == 0
    assert (tmp_path / "out.csv").read_text().count("\n") == 2


def test_info_and_check_print_the_domain(molecules, metals, capsys):
    assert main(["info", str(molecules)]) == 0
    out = capsys.readouterr().out
    assert "model: egnn" in out and "domain: elements (3): H C O" in out
    assert "domain: structures: 0 periodic, 40 non-periodic" in out and "energy (eV), forces (eV/Å)" in out
    # the default structures of `sciml check` are moved into the domain (Cu/Au for the metal model)
    assert main(["check", str(metals)]) == 0
    out = capsys.readouterr().out
    assert "domain: elements (2): Cu Au" in out and "replaced by the model's" in out and "PASS" in out


def test_exported_package_keeps_the_domain(metals, tmp_path):
    from sciml.deploy.export import export_model, load_potential

    package = export_model(metals, tmp_path / "model.pt2")
    potential = load_potential(package)
    assert potential.domain == load_model(metals).domain and potential.domain.source == str(package)
    fe = iron()
    fe.calc = SciMLCalculator(potential)
    with pytest.raises(DomainError, match="Fe outside"):
        fe.get_potential_energy()

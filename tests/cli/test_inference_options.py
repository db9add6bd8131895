"""Inference options every command shares: dtype (float64 by default in the calculator, md and
relax; the checkpoint's in predict), devices (one clear line for a device that does not exist),
files that are not checkpoints, per-atom energies, and the domain of fairchem checkpoints."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.io import read, write

from sciml.calculator import SciMLCalculator
from cli_testing import SMALL_RUN_CONFIG, one_error_line, train_small_ethanol_model
from sciml.cli.main import main
from sciml.devices import resolve_device, resolve_dtype
from sciml.inference import load_model
from sciml.io.checkpoint import CheckpointError
from sciml.models import build_model
from sciml.models.domain import DomainError

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"
FAIRCHEM = ROOT / "tests" / "fixtures" / "equiformer_v2_fairchem" / "small_random.pt"



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A float32 EGNN checkpoint trained one epoch on 20 ethanol frames."""
    return train_small_ethanol_model(tmp_path_factory.mktemp("options"))


def shortest_float32(value: float) -> float:
    return float(np.format_float_positional(np.float32(value), unique=True))


@pytest.mark.slow
def test_calculator_runs_in_float64_by_default_without_touching_the_callers_model(checkpoint):
    model = load_model(checkpoint)
    assert next(model.parameters()).dtype == torch.float32
    atoms = molecule("CH3CH2OH")
    atoms.calc = SciMLCalculator(model)
    assert atoms.calc.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    e64 = atoms.get_potential_energy()
    reference = load_model(checkpoint, dtype="float64")
    atoms32 = atoms.copy()
    atoms32.calc = SciMLCalculator(model, dtype="float32")
    e32 = atoms32.get_potential_energy()
    atoms.calc = SciMLCalculator(reference)
    assert atoms.get_potential_energy() == e64  # the same float64 computation
    assert e32 != e64 and e32 == pytest.approx(e64, rel=1e-5)


@pytest.mark.slow
def test_predict_float64_writes_the_float64_result_and_float32_its_shortest_decimals(checkpoint, capsys, tmp_path):
    structures = tmp_path / "frames.extxyz"
    write(structures, read(DATA, "100:104"))
    for dtype in ("float32", "float64"):
        argv = ["predict", "--checkpoint", str(checkpoint), str(structures), "--output", str(tmp_path / f"{dtype}.json")]
        assert main(argv + (["--dtype", dtype] if dtype == "float64" else [])) == 0
        assert capsys.readouterr().out.splitlines()[0] == f"device cpu (1 thread), dtype {dtype}"
    rows32 = json.loads((tmp_path / "float32.json").read_text())
    rows64 = json.loads((tmp_path / "float64.json").read_text())
    model64 = load_model(checkpoint, dtype=torch.float64)
    atoms = read(structures, ":")
    for row32, row64, frame in zip(rows32, rows64, atoms):
        frame.calc = SciMLCalculator(model64)
        assert row64["energy_eV"] == pytest.approx(frame.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(row64["forces_eV_per_A"], frame.get_forces(), atol=1e-10)
        # float32 runs carry no digits beyond float32's (each number is the shortest decimal of a
        # float32); float64 runs have the digits of float64
        assert all(shortest_float32(v) == v for v in [row32["energy_eV"], *np.ravel(row32["forces_eV_per_A"])])
        assert shortest_float32(row64["energy_eV"]) != row64["energy_eV"]
        assert row32["energy_eV"] == pytest.approx(row64["energy_eV"], rel=1e-5)
        assert row32["energy_eV"] != row64["energy_eV"]


@pytest.mark.slow
def test_devices_that_do_not_exist_give_one_line(checkpoint, capsys, tmp_path):
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="use --device cpu"):
        SciMLCalculator.from_checkpoint(str(checkpoint), device="cuda:1")
    assert resolve_dtype("double") == torch.float64 and resolve_dtype(None, torch.float32) == torch.float32
    xyz = tmp_path / "m.xyz"
    write(xyz, molecule("CH3CH2OH"))
    out = tmp_path / "out.csv"
    for argv in (["predict", "--checkpoint", str(checkpoint), str(xyz), "--output", str(out)],
                 ["md", str(checkpoint), str(xyz), "--output", str(out.with_suffix(".extxyz"))],
                 ["relax", str(checkpoint), str(xyz)], ["check", str(checkpoint)],
                 ["eval", "--checkpoint", str(checkpoint), str(DATA)]):
        for device, needle in (("cuda", "CUDA is not available"), ("cuda:3", "CUDA is not available"),
                               ("tpu", "unknown device 'tpu'")):
            one_error_line(capsys, main(argv + ["--device", device]), needle)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xyz"]
    config = tmp_path / "train.yaml"
    config.write_text(SMALL_RUN_CONFIG.format(data=DATA, out=tmp_path / "run"))
    one_error_line(capsys, main(["train", str(config), "--device", "cuda:1"]), "use --device cpu")
    one_error_line(capsys, main(["data", "generate", "navier-stokes", "--num", "1", "--output",
                                 str(tmp_path / "ns.mat"), "--device", "cuda"]), "use --device cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.xyz", "train.yaml"]
    if not torch.cuda.is_available():
        assert "CPU-only" in one_error_line(capsys, main(["relax", str(checkpoint), str(xyz), "--device", "cuda"]))


@pytest.mark.slow
def test_md_relax_check_say_device_and_dtype_first(checkpoint, capsys, tmp_path):
    xyz = tmp_path / "m.xyz"
    write(xyz, molecule("CH3CH2OH"))
    for argv, dtype in ((["md", str(checkpoint), str(xyz), "--steps", "2"], "float64"),
                        (["relax", str(checkpoint), str(xyz), "--steps", "2", "--dtype", "float32"], "float32"),
                        (["check", str(checkpoint)], "float64"),
                        (["eval", "--checkpoint", str(checkpoint), str(DATA)], "float32")):
        main(argv)
        assert capsys.readouterr().out.splitlines()[0] == f"device cpu (1 thread), dtype {dtype}", argv


@pytest.mark.parametrize("kind, text", [
    ("extxyz", "2\nLattice=\"5 0 0 0 5 0 0 0 5\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\nH 0 0 0\nH 0 0 0.7\n"),
    ("xyz", "2\n\nH 0 0 0\nH 0 0 0.7\n"),
    ("JSON", '{"model": "egnn", "weights": [1, 2]}\n'),
    ("CSV", "file,energy\na.cif,-1.0\nb.cif,-2.0\n"),
    ("CIF", "data_x\n_cell_length_a 4.0\n"),
    ("YAML", "model:\n  name: egnn\nepochs: 3\n"),
    ("POSCAR", "Cu\n1.0\n3.6 0 0\n0 3.6 0\n0 0 3.6\nCu\n1\nDirect\n0 0 0\n"),
])
def test_files_that_are_not_checkpoints_are_named_for_what_they_look_like(kind, text, capsys, tmp_path):
    path = tmp_path / "model.pt"
    path.write_text(text)
    expected = f"{path} is not a sciml or fairchem checkpoint (it looks like {kind})"
    with pytest.raises(CheckpointError) as refused:
        load_model(path)
    assert str(refused.value) == expected
    xyz = tmp_path / "m.xyz"
    write(xyz, molecule("H2O"))
    err = one_error_line(capsys, main(["predict", "--checkpoint", str(path), str(xyz)]), expected)
    assert "weights_only" not in err


@pytest.mark.slow
def test_per_atom_energies_sum_to_the_energy_and_follow_permutations(checkpoint, tmp_path):
    atoms = molecule("CH3CH2OH")
    atoms.calc = SciMLCalculator.from_checkpoint(str(checkpoint))
    energies = atoms.get_potential_energies()
    assert energies.shape == (9,) and energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
    order = np.random.default_rng(0).permutation(9)
    permuted = atoms[order]
    permuted.calc = SciMLCalculator.from_checkpoint(str(checkpoint))
    np.testing.assert_allclose(permuted.get_potential_energies(), energies[order], atol=1e-10)
    assert np.ptp(energies) > 1e-3  # not an even split of the total
    frames = tmp_path / "frames.extxyz"
    write(frames, read(DATA, ":3"))
    for suffix in ("json", "extxyz"):
        assert main(["predict", "--checkpoint", str(checkpoint), str(frames), "--output", str(tmp_path / f"p.{suffix}")]) == 0
    row = json.loads((tmp_path / "p.json").read_text())[0]
    assert len(row["energies_eV"]) == 9 and sum(row["energies_eV"]) == pytest.approx(row["energy_eV"], abs=1e-4)
    predicted = read(tmp_path / "p.extxyz", 0)
    np.testing.assert_allclose(predicted.arrays["sciml_energies"], row["energies_eV"], atol=1e-6)


@pytest.mark.slow
def test_equiformer_per_atom_energies_include_the_output_shift():
    model = build_model("equiformer_v2", num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
                        attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, lmax=2, mmax=1,
                        edge_channels=8, cutoff=5.0, direct_forces=False)
    with torch.no_grad():
        model.energy_shift.fill_(-3.25)
    crystal = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    crystal.rattle(0.05, seed=0)
    crystal.calc = SciMLCalculator(model)
    assert crystal.get_potential_energies().sum() == pytest.approx(crystal.get_potential_energy(), abs=1e-10)


@pytest.mark.slow
def test_fairchem_checkpoints_get_their_domain_from_the_config():
    model = load_model(FAIRCHEM)
    assert model.domain.elements == tuple(range(1, 90)) and not model.domain.counted
    assert model.domain.source == str(FAIRCHEM) and model.domain.labels == {"energy": "eV", "forces": "eV/Å"}
    uranium = bulk("U", "fcc", a=4.3)
    uranium.calc = SciMLCalculator(model)
    with pytest.raises(DomainError, match="U outside the domain"):
        uranium.get_potential_energy()

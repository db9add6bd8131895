from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from sciml.data import load_graph_dataset, read_structures

ETHANOL = Path(__file__).resolve().parents[2] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"


def test_reads_labelled_extxyz():
    frames = read_structures(ETHANOL, index=":5", required=("energy", "forces"))
    assert len(frames) == 5 and frames[0].get_chemical_formula() == "C2H6O"
    assert frames[0].get_forces().shape == (9, 3)


@pytest.mark.parametrize("name", ["POSCAR", "cu.cif", "frames.db"])
def test_reads_other_formats(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".db"):
        ase.io.write(path, read_structures(ETHANOL, index=":3"))
    else:
        ase.io.write(path, bulk("Cu", cubic=True))
    frames = read_structures(path)
    assert len(frames) == (3 if name.endswith(".db") else 1)


def test_load_graph_dataset_builds_each_graph_once():
    frames = read_structures(ETHANOL, index=":4")
    graphs = load_graph_dataset(frames, cutoff=10.0)
    assert len(graphs) == 4 and all(g.num_graphs == 1 and g.cutoff == 10.0 for g in graphs)
    assert graphs[0].positions.dtype == torch.float32 and graphs[0].num_edges == 72  # 9 x 8, all pairs
    assert torch.allclose(graphs[1].energy.double(), torch.tensor([frames[1].get_potential_energy()], dtype=torch.float64))
    from_file = load_graph_dataset(ETHANOL, cutoff=4.0, index=":4", dtype=torch.float64)
    assert from_file[3].forces.dtype == torch.float64


def test_labels_can_be_ignored_or_required(tmp_path):
    path = tmp_path / "unlabelled.xyz"
    ase.io.write(path, bulk("Cu", cubic=True), format="extxyz")
    assert len(read_structures(path, energy_key=None, forces_key=None, stress_key=None)) == 1
    with pytest.raises(ValueError, match="frame 0 has no energy label 'energy'"):
        read_structures(path, required=("energy",))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing": (None, "no such file"),
    "empty.xyz": ("", "file is empty"),
    "blank.xyz": ("\n\n", "contains no structures"),
    "unknown.xyz": ("2\n\nXx 0 0 0\nH 0 0 0.74\n", "unknown element symbol 'Xx'"),
    "nan.extxyz": ('2\nProperties=species:S:1:pos:R:3 energy=-1.0 pbc="F F F"\nH 0 0 nan\nH 0 0 0.74\n',
                   "frame 0: coordinates contain NaN or inf"),
    "junk.xyz": ("this is not\na structure file\n", "cannot read file"),
    "truncated.xyz": ("3\n\nH 0 0 0\nH 0 0 1\n", "cannot read file"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_files_give_one_line_errors(tmp_path, name):
    text, message = BAD_INPUTS[name]
    path = tmp_path / name if text is None else _write(tmp_path / name, text)
    with pytest.raises(ValueError, match=message) as err:
        read_structures(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_label_names_frame_and_present_keys(tmp_path):
    frames = read_structures(ETHANOL, index=":3")
    for atoms in frames:
        atoms.info["REF_energy"] = atoms.get_potential_energy()
    del frames[2].info["REF_energy"]
    path = tmp_path / "labels.extxyz"
    ase.io.write(path, frames)
    assert len(read_structures(path, index=":2", energy_key="REF_energy")) == 2
    present = r"\(keys present: calculator: energy, forces; info: time_fs"
    with pytest.raises(ValueError, match=r"frame 2 has no energy label 'REF_energy' " + present):
        read_structures(path, energy_key="REF_energy")
    with pytest.raises(ValueError, match="frame 0 has no property 'dipole'"):
        read_structures(path, index=":2", property_keys=["dipole"])


def test_non_finite_labels_are_rejected(tmp_path):
    frames = read_structures(ETHANOL, index=":2")
    frames[1].calc.results["forces"] = np.full((9, 3), np.inf)
    with pytest.raises(ValueError, match="frame 1: 'forces' contains NaN or inf"):
        load_graph_dataset(frames, cutoff=4.0)


def test_ase_database_reads_labels(tmp_path):
    path = tmp_path / "frames.db"
    with ase.db.connect(path) as db:
        for atoms in read_structures(ETHANOL, index=":2"):
            db.write(atoms)
    graphs = load_graph_dataset(path, cutoff=3.0)
    assert len(graphs) == 2 and graphs[0].forces.shape == (9, 3)

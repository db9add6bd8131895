"""Bad structure files through the command line: exit code 2, one line on stderr, nothing written;
``--species`` reads a POSCAR without a species line in predict, md and relax."""

from pathlib import Path

import pytest
from ase.build import molecule
from ase.io import read

from cli_testing import one_error_line, train_small_ethanol_model
from sciml.cli.main import main

pytestmark = pytest.mark.slow  # every test uses the checkpoint trained by the module fixture

ROOT = Path(__file__).resolve().parents[2]
MADE = ROOT / "datasets" / "structure_corpus" / "files" / "made"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A one-epoch ethanol model made with `sciml train`."""
    return str(train_small_ethanol_model(tmp_path_factory.mktemp("cli_structures")))


def vasp4_ethanol(path: Path) -> Path:
    """Ethanol in a 12 Å box as a POSCAR without a species line (C2 H6 O1 by count only)."""
    atoms = molecule("CH3CH2OH")
    atoms = atoms[[i for s in ("C", "H", "O") for i, a in enumerate(atoms) if a.symbol == s]]
    atoms.cell = [12.0, 12.0, 12.0]
    atoms.center()
    lines = ["ethanol C H O", "1.0", "12 0 0", "0 12 0", "0 0 12", "2 6 1", "Cartesian"]
    lines += [" ".join(f"{x:.6f}" for x in position) for position in atoms.positions]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name, needles", [
    ("partial_occupancy.cif", ("partial occupancies", "site O1", "O 0.85")),
    ("mixed_site_symbol.cif", ("partial occupancies", "site M1", "Mg 0.66 + Fe 0.317")),
    ("overlap_0.0005A.cif", ("overlapping atoms", "Cu1", "Cu2", "0.0005 Å")),
    ("attached_hydrogens.cif", ("implicit hydrogens", "C1")),
    ("POSCAR_no_species", ("no species line", "--species")),
])
def test_predict_refuses_bad_structure_files(checkpoint, capsys, tmp_path, name, needles):
    output = tmp_path / "out.csv"
    code = main(["predict", "--checkpoint", checkpoint, str(MADE / name), "--output", str(output)])
    one_error_line(capsys, code, str(MADE / name), *needles)
    assert not output.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["md", "relax"])
def test_md_and_relax_refuse_a_poscar_without_species(checkpoint, capsys, tmp_path, command):
    poscar = vasp4_ethanol(tmp_path / "POSCAR")
    output = tmp_path / "out.extxyz"
    code = main([command, checkpoint, str(poscar), "--steps", "2", "--output", str(output)])
    one_error_line(capsys, code, str(poscar), "no species line", "2 6 1")
    assert not output.exists()
    code = main([command, checkpoint, str(MADE / "partial_occupancy.cif"), "--steps", "2", "--output", str(output)])
    one_error_line(capsys, code, "partial occupancies", "site O1")
    assert not output.exists()


def test_species_reads_a_poscar_without_species_line(checkpoint, capsys, tmp_path):
    poscar = vasp4_ethanol(tmp_path / "POSCAR")
    output = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", checkpoint, str(poscar), "--output", str(output), "--species", "C", "H", "O"]) == 0
    assert ",C2H6O," in output.read_text()
    relaxed = tmp_path / "relaxed.extxyz"
    assert main(["relax", checkpoint, str(poscar), "--steps", "2", "--species", "C", "H", "O", "--output", str(relaxed)]) in (0, 1)
    assert read(relaxed).get_chemical_formula() == "C2H6O"
    trajectory = tmp_path / "md.extxyz"
    assert main(["md", checkpoint, str(poscar), "--steps", "2", "--species", "C", "H", "O", "--output", str(trajectory)]) == 0
    assert read(trajectory, "-1").get_chemical_formula() == "C2H6O"
    capsys.readouterr()
    code = main(["md", checkpoint, str(poscar), "--steps", "2", "--species", "C", "H"])
    one_error_line(capsys, code, "2 species (C H) but 3 counts")

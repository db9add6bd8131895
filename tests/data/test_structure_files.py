"""Real-world structure files read right, the same way through every reading path.

The corpus (``datasets/structure_corpus``: files from the test suites of pymatgen, spglib, ase,
MACE, matscipy and pyxtal, and a few made for sciml) is read file by file and compared with its
manifest: what each file holds (atom count, composition, cell volume per structure) or why it must
be refused. Every refusal must be a one-line ValueError naming the file.
"""

import gzip
import json
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from sciml.data.structure_index import index_structures, read_item
from sciml.cli.common import read_one_structure
from sciml.data import read_structures
from sciml.data.crystals import read_cif
from sciml.data.structure_files import read_poscar_text, structure_kind

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "datasets" / "structure_corpus"
FILES = CORPUS / "files"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())["files"]
#: The words a refusal of each manifest category must contain.
CATEGORY_WORDS = {
    "no_species": "no species line",
    "occupancy": "partial occupancies",
    "implicit_hydrogens": "implicit hydrogen",
    "overlap": "overlapping atoms",
    "not_an_element": "unknown element",
    "degenerate": "degenerate",
    "missing_lattice": "missing lattice",
    "bad_symmetry": "symmetry operation",
}
SECONDS_PER_FILE = 30


@contextmanager
def time_limit(seconds: int):
    """Fail (as a hang) when the block runs longer than ``seconds``."""
    def hang(signum, frame):
        raise TimeoutError(f"no answer in {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read(path):
    return read_structures(path, energy_key=None, forces_key=None, stress_key=None)


def described(atoms):
    counts = {}
    for symbol in atoms.get_chemical_symbols():
        counts[symbol] = counts.get(symbol, 0) + 1
    volume = float(abs(np.linalg.det(atoms.cell.array))) if atoms.pbc.all() else None
    return len(atoms), dict(sorted(counts.items())), volume


def test_manifest_covers_every_shipped_file_and_every_kind():
    shipped = sorted(p.relative_to(FILES).as_posix() for p in FILES.rglob("*") if p.is_file())
    assert shipped == sorted(MANIFEST)
    assert len(shipped) >= 150
    outcomes = [entry["expected"]["outcome"] for entry in MANIFEST.values()]
    assert outcomes.count("read") >= 80 and outcomes.count("refuse") >= 40
    reasons = {entry["expected"].get("reason") for entry in MANIFEST.values()}
    assert set(CATEGORY_WORDS) <= reasons
    names = [Path(name).name for name in MANIFEST]
    for pattern in (".cif", ".CIF", ".cif.gz", ".mcif", ".vasp", ".xyz", ".extxyz", ".gz"):
        assert any(name.endswith(pattern) for name in names), pattern
    for prefix in ("POSCAR", "CONTCAR"):
        assert any(name.startswith(prefix) for name in names), prefix


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_corpus_file_is_read_as_its_manifest_says(name):
    path = FILES / name
    expected = MANIFEST[name]["expected"]
    with time_limit(SECONDS_PER_FILE):
        if expected["outcome"] == "refuse":
            with pytest.raises(ValueError) as info:
                read(path)
            message = str(info.value)
            assert str(path) in message and "\n" not in message, message
            words = CATEGORY_WORDS.get(expected["reason"])
            assert words is None or words in message, message
            return
        frames = read(path)
    assert len(frames) == len(expected["frames"])
    for atoms, want in zip(frames, expected["frames"]):
        natoms, composition, volume = described(atoms)
        assert natoms == want["natoms"] and composition == want["composition"]
        if want["volume"] is not None:
            assert volume == pytest.approx(want["volume"], rel=1e-6)


def _positions(frames):
    return [(a.numbers.tolist(), np.round(a.positions, 8), np.round(a.cell.array, 8)) for a in frames]


def _same(first, second):
    assert len(first) == len(second)
    for (za, xa, ca), (zb, xb, cb) in zip(first, second):
        assert za == zb
        np.testing.assert_allclose(xa, xb, atol=1e-6)
        np.testing.assert_allclose(ca, cb, atol=1e-6)


@pytest.mark.parametrize("name", sorted(n for n in MANIFEST if not n.startswith("spglib/")) +
                         sorted(n for n in MANIFEST if n.startswith("spglib/"))[:10])
@pytest.mark.slow
def test_every_reading_path_gives_the_same_answer(name):
    """read_structures (train, check), read_one_structure (md, relax), batch inference (predict)
    and read_cif (crystal datasets) agree: same atoms, or a refusal from each."""
    path = str(FILES / name)
    try:
        reference = _positions(read(path))
    except ValueError as err:
        items, errors = index_structures([path])
        if errors:
            assert errors[0].startswith(path) and "\n" not in errors[0]
        else:
            for item in items:
                with pytest.raises(ValueError, match=r"^" + __import__("re").escape(path)):
                    read_item(item)
        with pytest.raises(ValueError):
            read_one_structure(path)
        assert "\n" not in str(err)
        return
    items, errors = index_structures([path])
    assert not errors
    _same(_positions([read_item(item) for item in items]), reference)
    _same(_positions([read_one_structure(path)]), reference[-1:])
    if structure_kind(path) == "cif" and len(reference) == 1:
        _same(_positions([read_cif(path)]), reference)


# ------------------------------------------------------------------------------- each problem
def made(name):
    return FILES / "made" / name


def refusal(path, *words):
    with pytest.raises(ValueError) as info:
        read(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_overlapping_sites_are_found_before_any_merge():
    # ase's own reader merges the two Cu sites 0.0005 Å apart, and Cu with Au on one site into Cu
    with pytest.warns(UserWarning, match="equivalent"):
        assert len(ase.io.read(made("overlap_0.0005A.cif"))) == 4
    assert ase.io.read(made("cu_au_one_site.cif")).get_chemical_formula() == "Cu4"
    refusal(made("overlap_0.0005A.cif"), "overlapping atoms", "Cu1", "Cu2", "0.0005 Å")
    refusal(made("cu_au_one_site.cif"), "overlapping atoms", "Cu1 (Cu)", "Au1 (Au)", "0.0000 Å")


def test_partial_and_mixed_occupancy_name_the_site_and_species():
    refusal(made("partial_occupancy.cif"), "partial occupancies", "site O1", "O 0.85")
    refusal(made("mixed_occupancy.cif"), "partial occupancies", "Cu1/Au1", "Cu 0.75 + Au 0.25")
    message = refusal(made("mixed_site_symbol.cif"), "partial occupancies", "site M1", "Mg 0.66 + Fe 0.317")
    assert "unknown element" not in message


def test_implicit_hydrogens_are_refused_not_dropped():
    refusal(made("attached_hydrogens.cif"), "site C1 (C)", "3 implicit hydrogens", "_atom_site_attached_hydrogens")


@pytest.mark.slow
def test_multi_block_cif_gives_every_structure():
    frames = read(made("two_blocks.cif"))
    assert [a.get_chemical_formula() for a in frames] == ["Cu4", "Cl4Na4"]
    assert [a.get_chemical_formula() for a in read_structures(made("two_blocks.cif"), index=-1, energy_key=None,
                                                              forces_key=None, stress_key=None)] == ["Cl4Na4"]
    items, errors = index_structures([str(made("two_blocks.cif"))])
    assert not errors and [read_item(item).get_chemical_formula() for item in items] == ["Cu4", "Cl4Na4"]
    with pytest.raises(ValueError, match="holds 2 structures"):
        read_cif(made("two_blocks.cif"))


def test_magnetic_cif_uses_its_operations_and_centerings():
    nio = read(FILES / "pymatgen" / "magnetic.example.NiO.mcif")[0]
    assert nio.get_chemical_formula() == "Ni32O32"  # 4 operations x 32 centerings on the 2x2x2 cell
    distances = nio.get_all_distances(mic=True)[np.triu_indices(len(nio), 1)]
    assert distances.min() == pytest.approx(8.35 / 4, rel=1e-6)  # Ni-O of rock salt, a = 4.175 Å


def test_cif_that_ase_cannot_tokenize_is_read_with_pymatgens_tokenizer():
    path = FILES / "pyxtal" / "resorcinol.cif"
    with pytest.raises(Exception):
        ase.io.read(path, format="cif")
    assert read(path)[0].get_chemical_formula() == "C48H48O16"


def test_poscar_without_species_is_refused_or_read_with_species():
    path = made("POSCAR_no_species")
    assert ase.io.read(path).get_chemical_formula() == "Au3Cu"  # ase invents them from the comment line
    refusal(path, "no species line", "counts 1 3", "--species")
    atoms = read_structures(path, energy_key=None, forces_key=None, stress_key=None, species=["Cu", "Au"])[0]
    assert atoms.get_chemical_symbols() == ["Cu", "Au", "Au", "Au"]
    with pytest.raises(ValueError, match="2 species .* but 1 counts"):
        read_poscar_text("x\n1\n1 0 0\n0 1 0\n0 0 1\n1\nDirect\n0 0 0\n", "p", ["Cu", "Au"])
    with pytest.raises(ValueError, match="differs from the file's species line"):
        read_structures(made("CONTCAR_vasp6_hashes"), species=["K", "Cl"])


def test_wrapped_species_and_count_lines_are_read():
    atoms = read(made("POSCAR_wrapped_lines"))[0]
    assert atoms.get_chemical_symbols() == ["Fe", "Co", "Ni", "Cr", "Mn"]
    np.testing.assert_allclose(atoms.get_scaled_positions()[4], [0.5, 0.5, 0.5])
    assert read(made("CONTCAR_vasp6_hashes"))[0].get_chemical_formula() == "Cl4Na4"


@pytest.mark.parametrize("name", ["cu.cif", "cu.CIF", "cu.cif.gz", "POSCAR", "CONTCAR", "cu.vasp", "POSCAR.gz",
                                  "CONTCAR_relaxed", "cu.xyz", "cu.XYZ", "cu.extxyz", "cu.extxyz.gz", "cu.traj"])
def test_any_file_name_reads_the_same_structure(tmp_path, name):
    copper = bulk("Cu", "fcc", a=3.61, cubic=True)
    plain = name.removesuffix(".gz")
    format = {"cif": "cif", "vasp": "vasp", "xyz": "extxyz", "extxyz": "extxyz", "traj": "traj"}.get(
        plain.rsplit(".", 1)[-1].lower(), "vasp")
    target = tmp_path / plain
    ase.io.write(target, copper, format=format)
    if name.endswith(".gz"):
        with open(target, "rb") as source, gzip.open(tmp_path / name, "wb") as packed:
            shutil.copyfileobj(source, packed)
        target.unlink()
    path = tmp_path / name
    for atoms in (read(path)[0], read_one_structure(str(path))):
        assert atoms.get_chemical_formula() == "Cu4"
        np.testing.assert_allclose(atoms.cell.array, copper.cell.array, atol=1e-6)
        np.testing.assert_allclose(np.sort(atoms.get_scaled_positions() % 1, axis=0),
                                   np.sort(copper.get_scaled_positions() % 1, axis=0), atol=1e-6)
    items, errors = index_structures([str(path)])
    assert not errors and read_item(items[0]).get_chemical_formula() == "Cu4"


def test_coincident_atoms_in_xyz_are_refused_everywhere(tmp_path):
    path = tmp_path / "twice.xyz"
    path.write_text("3\n\nO 0 0 0\nH 0 0 0.96\nH 0 0 0.96001\n")
    refusal(path, "overlapping atoms", "atoms 1 (H) and 2 (H)")
    items, errors = index_structures([str(path)])
    with pytest.raises(ValueError, match="overlapping atoms"):
        read_item(items[0])


def test_crystal_dataset_folders_take_cifs_of_any_name(tmp_path):
    from sciml.data.crystals import detect_crystal_format, read_crystal_records

    shutil.copyfile(made("partial_occupancy.cif"), tmp_path / "bad.cif")
    shutil.copyfile(FILES / "ase" / "cod_9004112.cif", tmp_path / "upper.CIF")
    with open(FILES / "pyxtal" / "NbO2.cif", "rb") as source, gzip.open(tmp_path / "packed.cif.gz", "wb") as packed:
        shutil.copyfileobj(source, packed)
    assert detect_crystal_format(tmp_path) == "cif" and detect_crystal_format(tmp_path / "packed.cif.gz") == "cif"
    skipped = []
    records = read_crystal_records(tmp_path, "cif", skip_bad=True, skipped=skipped)
    assert sorted(r.id for r in records) == ["packed", "upper"]
    assert len(skipped) == 1 and "partial occupancies" in str(skipped[0])


SITE_CIF = """data_x
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_symmetry_equiv_pos_as_xyz
'x, y, z'
'{operation}'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
A1 {symbol} 0.1 0.2 0.3
"""


@pytest.mark.parametrize("symbol, element", [("Fe", "Fe"), ("Fe3+", "Fe"), ("O2-", "O"), ("CA", "Ca"), ("Fe2", "Fe"),
                                             ("D", "H"), ("OH2", None), ("NH4", None), ("Xx", None)])
def test_type_symbols_name_an_element_or_are_refused(tmp_path, symbol, element):
    path = tmp_path / "site.cif"
    path.write_text(SITE_CIF.format(operation="-x, -y, z+1/2", symbol=symbol))
    if element is None:
        refusal(path, "unknown element", repr(symbol), "site A1")
    else:
        assert read(path)[0].get_chemical_symbols() == [element, element]


@pytest.mark.parametrize("operation", ["-x, -y", "x, y, q", "x, y, z+", "1" * 60 + "!, y, z"])
def test_unreadable_symmetry_operations_are_refused_at_once(tmp_path, operation):
    path = tmp_path / "site.cif"
    path.write_text(SITE_CIF.format(operation=operation, symbol="Cu"))
    with time_limit(5):
        refusal(path, "symmetry operation")

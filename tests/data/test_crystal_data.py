"""Crystal dataset readers and writers (JARVIS, MatBench, Materials Project, CIF), the standard
splits, and validated input: each bad input is one CrystalInputError naming the file."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import random
import zipfile

import ase
import ase.io
import numpy as np
import pytest
from ase.build import bulk

from sciml.data.crystals import (
    CrystalInputError,
    CrystalRecord,
    alignn_split,
    check_crystal,
    detect_crystal_format,
    load_split,
    matbench_folds,
    matbench_ids,
    official_matbench_folds,
    read_cif,
    read_crystal_dataset,
    read_crystal_files,
    read_jarvis,
    read_matbench,
    read_materials_project,
    records_to_atoms,
    save_split,
    select_split,
    write_jarvis,
    write_matbench,
)
from sciml.data.crystals.matbench import MATBENCH_STRATIFIED_TASKS, _validation_file


def _random_crystal() -> ase.Atoms:
    pyxtal = pytest.importorskip("pyxtal")
    crystal = pyxtal.pyxtal()
    crystal.from_random(3, 19, ["Cu", "Au"], [4, 4], random_state=7)
    atoms = crystal.to_ase()
    atoms.pbc = True
    return atoms


@pytest.fixture(scope="module")
def records():
    rocksalt = bulk("NaCl", "rocksalt", a=5.64)
    copper = bulk("Cu", "fcc", a=3.61, cubic=True)
    copper.positions += 0.01 * np.random.default_rng(0).normal(size=copper.positions.shape)
    return [
        CrystalRecord("JVASP-1", rocksalt, {"formation_energy_peratom": -2.1, "mbj_bandgap": 5.0}),
        CrystalRecord("JVASP-2", copper, {"formation_energy_peratom": 0.0, "mbj_bandgap": None}),
        CrystalRecord("JVASP-3", _random_crystal(), {"formation_energy_peratom": 0.13, "mbj_bandgap": 0.0}),
    ]


def _assert_same(read, written, cell_tol=1e-12, pos_tol=1e-10):
    assert [r.id for r in read] == [r.id for r in written]
    for a, b in zip(read, written):
        assert a.atoms.pbc.all()
        assert a.atoms.get_chemical_symbols() == b.atoms.get_chemical_symbols()
        np.testing.assert_allclose(a.atoms.cell.array, b.atoms.cell.array, atol=cell_tol)
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions, atol=pos_tol)
        assert a.targets == b.targets


# ---------------------------------------------------------------------------------- JARVIS


@pytest.mark.parametrize("name", ["dft_3d.json", "dft_3d.json.gz", "jdft_3d.json.zip"])
@pytest.mark.parametrize("cartesian", [False, True])
def test_jarvis_roundtrip(tmp_path, records, name, cartesian):
    path = tmp_path / name
    write_jarvis(records, path, cartesian=cartesian)
    read = read_jarvis(path)
    _assert_same(read, records, pos_tol=0 if cartesian else 1e-12)
    # what was read writes back the same file: byte for byte with Cartesian coordinates; with
    # fractional ones up to the rounding of fractional -> Cartesian -> fractional (1e-16)
    again = tmp_path / ("again_" + name)
    write_jarvis(read, again, cartesian=cartesian)
    if cartesian:
        assert _text(again) == _text(path)
    first, second = json.loads(_text(path)), json.loads(_text(again))
    for a, b in zip(first, second):
        np.testing.assert_allclose(a["atoms"].pop("coords"), b["atoms"].pop("coords"), rtol=0, atol=1e-14)
    assert first == second


def _text(path):
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt") as handle:
            return handle.read()
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            return archive.read(archive.namelist()[0]).decode()
    return path.read_text()


def test_jarvis_layout_matches_jarvis_tools(tmp_path, records):
    write_jarvis(records[:2], tmp_path / "d.json")
    entries = json.loads((tmp_path / "d.json").read_text())
    atoms = entries[0]["atoms"]
    assert list(atoms) == ["lattice_mat", "coords", "elements", "abc", "angles", "cartesian", "props"]
    assert atoms["cartesian"] is False and atoms["props"] == ["", ""]
    np.testing.assert_allclose(atoms["abc"], [5.64 / np.sqrt(2)] * 3, atol=1e-6)
    np.testing.assert_allclose(atoms["angles"], [60.0] * 3, atol=1e-6)
    np.testing.assert_allclose(np.mod(atoms["coords"][1], 1.0), [0.5, 0.5, 0.5], atol=1e-12)
    assert entries[1]["mbj_bandgap"] == "na" and entries[1]["jid"] == "JVASP-2"


def test_jarvis_reads_a_dft_3d_entry(tmp_path):
    # the layout of JVASP-1002 (Si) in dft_3d: fractional coordinates, "na" values, extra fields
    entry = {
        "jid": "JVASP-1002",
        "atoms": {
            "lattice_mat": [[3.3505, 0.0, 1.9344], [1.1168, 3.1589, 1.9344], [0.0, 0.0, 3.8688]],
            "coords": [[0.875, 0.875, 0.875], [0.125, 0.125, 0.125]],
            "elements": ["Si", "Si"],
            "abc": [3.8688, 3.8688, 3.8688],
            "angles": [60.0, 60.0, 60.0],
            "cartesian": False,
            "props": ["", ""],
        },
        "formula": "Si",
        "formation_energy_peratom": 0.0,
        "optb88vdw_bandgap": 0.731,
        "mbj_bandgap": 1.277,
        "bulk_modulus_kv": "na",
        "elastic_tensor": "na",
        "efg": [],
    }
    path = tmp_path / "dft_3d.json"
    path.write_text(json.dumps([entry]))
    (record,) = read_jarvis(path)
    assert record.id == "JVASP-1002"
    assert record.targets["mbj_bandgap"] == 1.277
    # fields that hold a number somewhere are targets; text, lists and all-"na" fields are not
    assert set(record.targets) == {"formation_energy_peratom", "optb88vdw_bandgap", "mbj_bandgap"}
    assert read_jarvis(path, targets=["bulk_modulus_kv"])[0].targets == {"bulk_modulus_kv": None}
    cell = np.array(entry["atoms"]["lattice_mat"])
    np.testing.assert_allclose(record.atoms.positions, np.array(entry["atoms"]["coords"]) @ cell, atol=1e-12)
    with pytest.raises(ValueError, match="optb88vdw_bandgapp"):
        read_jarvis(path, targets=["optb88vdw_bandgapp"])


def test_jarvis_bad_records(tmp_path, records):
    path = tmp_path / "bad.json"
    write_jarvis(records, path)
    entries = json.loads(path.read_text())
    entries[0]["atoms"]["elements"][0] = "Xx"
    entries[1]["atoms"]["coords"][1] = list(entries[1]["atoms"]["coords"][0])  # same site twice
    del entries[2]["atoms"]["lattice_mat"]
    path.write_text(json.dumps(entries))
    with pytest.raises(CrystalInputError, match=r"bad\.json \(record JVASP-1\): unknown element 'Xx'"):
        read_jarvis(path)
    skipped = []
    assert read_jarvis(path, skip_bad=True, skipped=skipped) == []
    reasons = dict(skipped)
    assert "overlapping atoms" in reasons[f"{path} (record JVASP-2)"]
    assert "missing lattice" in reasons[f"{path} (record JVASP-3)"]


# -------------------------------------------------------------------------------- MatBench


def test_matbench_roundtrip(tmp_path, records):
    path = tmp_path / "matbench_jdft2d.json.gz"
    write_matbench(records, path, "mbj_bandgap")
    with gzip.open(path, "rt") as handle:
        table = json.load(handle)
    assert table["columns"] == ["structure", "mbj_bandgap"] and table["index"] == [0, 1, 2]
    assert table["data"][0][0]["@class"] == "Structure" and table["data"][1][1] is None
    target, read = read_matbench(path, task="matbench_jdft2d")
    assert target == "mbj_bandgap"
    assert [r.id for r in read] == ["mb-jdft2d-1", "mb-jdft2d-2", "mb-jdft2d-3"]
    expected = [CrystalRecord(r.id, w.atoms, {"mbj_bandgap": w.targets["mbj_bandgap"]}) for r, w in zip(read, records)]
    _assert_same(read, expected, pos_tol=1e-9)
    assert [r.id for r in read_matbench(path)[1]] == ["0", "1", "2"]
    # the pandas reader understands what we write
    pandas = pytest.importorskip("pandas")
    frame = pandas.read_json(path, orient="split", compression="gzip")
    assert list(frame.columns) == ["structure", "mbj_bandgap"] and len(frame) == 3


def test_matbench_ids_follow_matbench():
    assert matbench_ids("matbench_mp_e_form", 132752)[:2] == ["mb-mp-e-form-000001", "mb-mp-e-form-000002"]
    assert matbench_ids("matbench_jdft2d", 636)[-1] == "mb-jdft2d-636"
    assert matbench_ids("matbench_dielectric", 4764)[0] == "mb-dielectric-0001"


def test_matbench_bad_record_and_composition_task(tmp_path, records):
    from pymatgen.core import Lattice, Structure

    disordered = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    path = tmp_path / "task.json"
    write_matbench(records[:1], path, "e_form")
    table = json.loads(path.read_text())
    table["data"].append([disordered.as_dict(), 1.0])
    table["index"].append(1)
    path.write_text(json.dumps(table))
    with pytest.raises(CrystalInputError, match=r"task\.json \(record mb-steels-2\): partial occupancy"):
        read_matbench(path, task="matbench_steels")
    skipped = []
    assert len(read_matbench(path, skip_bad=True, skipped=skipped)[1]) == 1 and len(skipped) == 1
    path.write_text(json.dumps({"index": [0], "columns": ["composition", "gap expt"], "data": [["Si", 1.1]]}))
    with pytest.raises(CrystalInputError, match="composition task"):
        read_matbench(path)


def _official_or_skip():
    try:
        return _validation_file()
    except ImportError:
        pytest.skip("the matbench package is not installed")


@pytest.mark.slow
def test_matbench_folds_equal_the_official_ones():
    validation = _official_or_skip()
    assert validation["metadata"] == {"n_splits": 5, "random_state": 18012019, "shuffle": True}
    tasks = validation["splits"]
    assert len(tasks) == 13
    for task in tasks:
        official = official_matbench_folds(task)
        n = len(official[0][0]) + len(official[0][1])
        ids = np.array(matbench_ids(task, n))
        ours = matbench_folds(n)
        if task in MATBENCH_STRATIFIED_TASKS:
            # label-stratified upstream: not KFold, but the same partition sizes
            assert sorted(len(test) for _, test in official) == sorted(len(test) for _, test in ours), task
            assert sorted(i for _, test in official for i in test) == sorted(ids.tolist()), task
            continue
        for k, ((train_ids, test_ids), (train, test)) in enumerate(zip(official, ours)):
            # the official lists are in dataset order, as KFold.split returns indices
            assert ids[test].tolist() == test_ids, (task, k)
            assert ids[train].tolist() == train_ids, (task, k)


def test_matbench_folds_partition():
    folds = matbench_folds(23)
    assert [len(test) for _, test in folds] == [5, 5, 5, 4, 4]
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(23))
    for train, test in folds:
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
        assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 23
    with pytest.raises(ValueError):
        matbench_folds(3)


def test_official_matbench_folds_without_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match="pip install matbench"):
        official_matbench_folds("matbench_jdft2d")


# ------------------------------------------------------------------------ Materials Project


def test_materials_project_json(tmp_path, records):
    from pymatgen.io.cif import CifWriter

    from sciml.data.crystals._pymatgen import ase_to_structure_dict

    entries = [
        {"material_id": f"mp-{k}", "structure": ase_to_structure_dict(r.atoms), "formation_energy_per_atom": r.targets["formation_energy_peratom"],
         "band_gap": r.targets["mbj_bandgap"], "formula_pretty": "Na"}
        for k, r in enumerate(records)
    ]
    path = tmp_path / "mp.json"
    path.write_text(json.dumps(entries))
    read = read_materials_project(path)
    assert [r.id for r in read] == ["mp-0", "mp-1", "mp-2"]
    assert read[1].targets == {"formation_energy_per_atom": 0.0, "band_gap": None}
    for a, r in zip(read, records):
        np.testing.assert_allclose(a.atoms.positions, r.atoms.positions, atol=1e-9)
        np.testing.assert_allclose(a.atoms.cell.array, r.atoms.cell.array, atol=1e-12)
    # {id: entry} and the MEGNet layout with CIF strings
    by_id = {e["material_id"]: {k: v for k, v in e.items() if k != "material_id"} for e in entries}
    (tmp_path / "by_id.json").write_text(json.dumps(by_id))
    assert [r.id for r in read_materials_project(tmp_path / "by_id.json")] == ["mp-0", "mp-1", "mp-2"]
    from pymatgen.core import Structure

    megnet = [dict(e, structure=str(CifWriter(Structure.from_dict(e["structure"])))) for e in entries]
    (tmp_path / "megnet.json").write_text(json.dumps(megnet))
    read = read_materials_project(tmp_path / "megnet.json", targets=["band_gap"])
    assert read[0].targets == {"band_gap": 5.0}
    np.testing.assert_allclose(read[2].atoms.get_scaled_positions() % 1, records[2].atoms.get_scaled_positions() % 1, atol=1e-6)


@pytest.mark.parametrize("table", ["csv", "id_prop", "json"])
def test_materials_project_cif_directory(tmp_path, records, table):
    for r in records:
        ase.io.write(tmp_path / f"{r.id}.cif", r.atoms)
    rows = [(r.id, r.targets["formation_energy_peratom"], r.targets["mbj_bandgap"]) for r in records[:2]]
    if table == "csv":
        targets_path = tmp_path / "targets.csv"
        with open(targets_path, "w", newline="") as handle:
            csv.writer(handle).writerows([("material_id", "e_form", "gap")] + [(i, e, "" if g is None else g) for i, e, g in rows])
        names = ("e_form", "gap")
    elif table == "id_prop":
        targets_path = tmp_path / "id_prop.csv"
        targets_path.write_text("".join(f"{i},{e}\n" for i, e, _ in rows))
        names = ("target",)
    else:
        targets_path = tmp_path / "targets.json"
        targets_path.write_text(json.dumps([{"material_id": i, "e_form": e, "gap": g} for i, e, g in rows]))
        names = ("e_form", "gap")
    read = read_materials_project(tmp_path, targets_path=targets_path)
    assert [r.id for r in read] == ["JVASP-1", "JVASP-2", "JVASP-3"]
    assert read[0].targets[names[0]] == -2.1 and read[2].targets == {}
    if len(names) == 2:
        assert read[1].targets["gap"] is None
    for a, r in zip(read, records):  # a CIF keeps the cell parameters, not its orientation
        np.testing.assert_allclose(a.atoms.cell.cellpar(), r.atoms.cell.cellpar(), atol=1e-9)
        np.testing.assert_allclose(a.atoms.get_scaled_positions(), r.atoms.get_scaled_positions(), atol=1e-6)
    # the dispatcher: a CIF directory, targets from the table, the unlabelled structure dropped
    atoms = read_crystal_dataset(tmp_path, target=names[0], targets_path=targets_path)
    assert [a.info["id"] for a in atoms] == ["JVASP-1", "JVASP-2"] and atoms[0].info[names[0]] == -2.1


# --------------------------------------------------------------------------------------- CIF

ROCKSALT_CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na1 Na 0.0 0.0 0.0 1.0
Cl1 Cl 0.5 0.5 0.5 1.0
"""


def test_read_cif_expands_symmetry(tmp_path):
    path = tmp_path / "nacl.cif"
    path.write_text(ROCKSALT_CIF)
    atoms = read_cif(path)
    assert atoms.pbc.all() and len(atoms) == 8 and atoms.get_chemical_formula() == "Cl4Na4"
    np.testing.assert_allclose(atoms.cell.lengths(), [5.64] * 3)
    assert atoms.info == {}


def _bad_cifs():
    lines = ROCKSALT_CIF.splitlines()
    p1 = ROCKSALT_CIF.replace("'F m -3 m'", "'P 1'").replace("225", "1")
    return {
        "partial.cif": (ROCKSALT_CIF.replace("Na1 Na 0.0 0.0 0.0 1.0", "Na1 Na 0.0 0.0 0.0 0.5\nK1 K 0.0 0.0 0.0 0.5"), "partial occupancies"),
        "overlap.cif": (p1.replace("Cl1 Cl 0.5 0.5 0.5", "Cl1 Cl 0.02 0.03 0.0"), "overlapping atoms"),
        "overlap_image.cif": (p1.replace("Cl1 Cl 0.5 0.5 0.5", "Cl1 Cl 0.99 0.0 0.0"), r"overlapping atoms .*periodic image"),
        "no_lattice.cif": ("\n".join(l for l in lines if not l.startswith("_cell_length")), "missing lattice"),
        "unknown.cif": (ROCKSALT_CIF.replace("Cl1 Cl", "Xx1 Xx"), "unknown element 'Xx'"),
        "no_atoms.cif": ("\n".join(lines[:10]) + "\n", "no atoms"),
        "garbage.cif": ("this is not a crystal\n{]}\n", "unparsable CIF"),
        "broken_loop.cif": (ROCKSALT_CIF.replace("Cl1 Cl 0.5 0.5 0.5 1.0", "Cl1 Cl 0.5 0.5"), "unparsable CIF"),
        "binary.cif": (None, "not a CIF file"),
    }


@pytest.mark.parametrize("name", sorted(_bad_cifs()))
def test_bad_cif_names_file_and_problem(tmp_path, name):
    text, problem = _bad_cifs()[name]
    path = tmp_path / name
    if text is None:
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.write_text(text)
    with pytest.raises(CrystalInputError, match=problem) as info:
        read_cif(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


@pytest.mark.slow
def test_read_crystal_files_skips_and_lists(tmp_path):
    good = tmp_path / "good.cif"
    good.write_text(ROCKSALT_CIF)
    bad = []
    for name, (text, _) in _bad_cifs().items():
        if text is not None:
            (tmp_path / name).write_text(text)
            bad.append(tmp_path / name)
    missing = tmp_path / "missing.cif"
    ok, failed = read_crystal_files([good, *bad, missing])
    assert [p for p, _ in ok] == [good] and len(ok[0][1]) == 8
    assert [p for p, _ in failed] == [*bad, missing]
    assert all(reason.startswith(str(p)) for p, reason in failed)
    with pytest.raises(CrystalInputError, match="partial"):
        read_crystal_files([good, tmp_path / "partial.cif"], skip_bad=False)


def test_check_crystal():
    copper = bulk("Cu", "fcc", a=3.61)
    assert check_crystal(copper, "x") is copper
    with pytest.raises(CrystalInputError, match="^src: not periodic"):
        check_crystal(ase.Atoms("Cu", cell=np.eye(3) * 3, pbc=[True, True, False]), "src")
    with pytest.raises(CrystalInputError, match="^src: no atoms"):
        check_crystal(ase.Atoms(cell=np.eye(3) * 3, pbc=True), "src")
    with pytest.raises(CrystalInputError, match="singular lattice"):
        check_crystal(ase.Atoms("Cu", cell=np.zeros((3, 3)), pbc=True), "src")
    # a tiny cell whose periodic image is within 0.5 Å
    with pytest.raises(CrystalInputError, match="periodic image"):
        check_crystal(ase.Atoms("H", cell=np.eye(3) * 0.4, pbc=True), "src")


# ------------------------------------------------------------------------------------ splits


def _reference_alignn(total_size, split_seed=123, train_ratio=0.8, val_ratio=0.1, test_ratio=0.1):
    # get_id_train_val_test of alignn/data.py and ComFormer, restated for the comparison
    n_train, n_test, n_val = int(train_ratio * total_size), int(test_ratio * total_size), int(val_ratio * total_size)
    ids = list(np.arange(total_size))
    random.seed(split_seed)
    random.shuffle(ids)
    return ids[:n_train], ids[-(n_val + n_test) : -n_test], ids[-n_test:]


def test_alignn_split_matches_reference_and_comformer_sizes():
    split = alignn_split(55723)
    assert [len(split[k]) for k in ("train", "valid", "test")] == [44578, 5572, 5572]
    assert len(set(split["train"]) | set(split["valid"]) | set(split["test"])) == 55722
    state = random.getstate()
    again = alignn_split(55723)
    assert random.getstate() == state and again == split
    for n, ratios in [(55723, (0.8, 0.1, 0.1)), (1000, (0.6, 0.2, 0.2)), (37, (0.8, 0.1, 0.1))]:
        ours = alignn_split(n, *ratios, seed=42)
        reference = _reference_alignn(n, 42, *ratios)
        assert (ours["train"], ours["valid"], ours["test"]) == tuple([int(i) for i in part] for part in reference)
    assert alignn_split(5)["test"] == []
    with pytest.raises(ValueError):
        alignn_split(10, 0.9, 0.1, 0.1)


def test_split_files(tmp_path):
    ids = [f"JVASP-{k}" for k in range(20)]
    split = alignn_split(20)
    save_split(split, ids, tmp_path / "split.json")
    loaded = load_split(tmp_path / "split.json")
    assert loaded == {name: [ids[i] for i in split[name]] for name in ("train", "valid", "test")}
    (tmp_path / "ids_train_val_test.json").write_text(json.dumps({"id_train": ids[:2], "id_val": ids[2:3], "id_test": ids[3:4]}))
    assert load_split(tmp_path / "ids_train_val_test.json") == {"train": ids[:2], "valid": ids[2:3], "test": ids[3:4]}
    atoms = [ase.Atoms("H", info={"id": i}) for i in reversed(ids)]
    grouped = select_split(atoms, loaded)
    assert [a.info["id"] for a in grouped["test"]] == loaded["test"]
    with pytest.raises(KeyError, match="JVASP-99"):
        select_split(atoms, {"test": ["JVASP-99"]})


# -------------------------------------------------------------------------------- dispatcher


@pytest.mark.slow
def test_read_crystal_dataset_every_format(tmp_path, records):
    write_jarvis(records, tmp_path / "dft_3d.json.zip")
    write_matbench(records, tmp_path / "matbench_x.json.gz", "mbj_bandgap")
    from sciml.data.crystals._pymatgen import ase_to_structure_dict

    (tmp_path / "mp.json").write_text(json.dumps([{"material_id": r.id, "structure": ase_to_structure_dict(r.atoms), **r.targets} for r in records]))
    (tmp_path / "one.cif").write_text(ROCKSALT_CIF)
    assert detect_crystal_format(tmp_path / "dft_3d.json.zip") == "jarvis"
    assert detect_crystal_format(tmp_path / "matbench_x.json.gz") == "matbench"
    assert detect_crystal_format(tmp_path / "mp.json") == "mp"
    assert detect_crystal_format(tmp_path / "one.cif") == "cif"
    for name in ("dft_3d.json.zip", "matbench_x.json.gz", "mp.json"):
        atoms = read_crystal_dataset(tmp_path / name, target="mbj_bandgap", **({"task": "matbench_x"} if "matbench" in name else {}))
        assert [a.info["mbj_bandgap"] for a in atoms] == [5.0, 0.0], name
        assert all(isinstance(a, ase.Atoms) and a.pbc.all() for a in atoms)
    assert [a.info["id"] for a in read_crystal_dataset(tmp_path / "matbench_x.json.gz", task="matbench_x")] == ["mb-x-1", "mb-x-3"]
    assert [a.info["id"] for a in read_crystal_dataset(tmp_path / "mp.json", "mp", "mbj_bandgap")] == ["JVASP-1", "JVASP-3"]
    with pytest.raises(ValueError, match="no entry has the target"):
        read_crystal_dataset(tmp_path / "dft_3d.json.zip", target="mbj_bandgp")
    with pytest.raises(ValueError, match="not 'gap'"):
        read_crystal_dataset(tmp_path / "matbench_x.json.gz", target="gap")
    with pytest.raises(ValueError, match="one.cif: unknown target 'e_form'"):
        read_crystal_dataset(tmp_path / "one.cif", target="e_form")


def test_records_to_atoms_drops_missing():
    records = [
        CrystalRecord("a", bulk("Cu"), {"y": 1.0}),
        CrystalRecord("b", bulk("Cu"), {"y": None}),
        CrystalRecord("c", bulk("Cu"), {"y": float("nan")}),
    ]
    atoms = records_to_atoms(records, "y")
    assert [(a.info["id"], a.info["y"]) for a in atoms] == [("a", 1.0)]
    assert "y" not in records[0].atoms.info
    with pytest.raises(ValueError, match="unknown target 'z'.*y"):
        records_to_atoms(records, "z")


@pytest.mark.slow
def test_materials_project_skips_bad_structures(tmp_path):
    (tmp_path / "mp-1.cif").write_text(ROCKSALT_CIF)
    (tmp_path / "mp-2.cif").write_text(ROCKSALT_CIF.replace("Cl1 Cl", "Xx1 Xx"))
    (tmp_path / "targets.csv").write_text("material_id,band_gap\nmp-1,5.0\nmp-2,1.0\nmp-3,2.0\n")
    with pytest.raises(CrystalInputError, match=r"mp-2\.cif: unknown element"):
        read_materials_project(tmp_path)
    skipped = []
    read = read_materials_project(tmp_path, skip_bad=True, skipped=skipped)
    assert [(r.id, r.targets) for r in read] == [("mp-1", {"band_gap": 5.0})]
    assert [source for source, _ in skipped] == [f"{tmp_path / 'mp-2.cif'} (record mp-2)"]
    entries = [{"material_id": "mp-9", "structure": {"@class": "Molecule", "sites": []}, "band_gap": 1.0}]
    (tmp_path / "mp.json").write_text(json.dumps(entries))
    with pytest.raises(CrystalInputError, match=r"mp\.json \(record mp-9\): expected a pymatgen Structure"):
        read_materials_project(tmp_path / "mp.json")

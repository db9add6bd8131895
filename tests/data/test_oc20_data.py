"""OC20 data: the EMT generator, the S2EF/ASE-db/legacy-LMDB readers, the sciml cache, the CLI
and trainer entry points. Everything runs on a few small generated relaxations (no downloads)."""

from __future__ import annotations

import io
import json
import lzma
import os
import pickle
import sys

import ase.io
import lmdb
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sciml.cli.main import main
from sciml.data.oc20 import (
    CachedDataset,
    LegacyLmdb,
    detect_format,
    graph_from_record,
    is2re_records,
    iter_records,
    load_graphs,
    preprocess,
    read_ase_db,
    read_s2ef_extxyz,
    relax_adsorbates,
    s2ef_records,
    write_ase_db,
    write_legacy_lmdb,
    write_oc20_dataset,
)
from sciml.data.oc20._lmdb import write_lmdb
from sciml.data.oc20.legacy_lmdb import fairchem_fields, pyg_data_pickle
from sciml.data.sampling import AtomBalancedBatchSampler
from sciml.graph.atomic_graph import AtomicGraph
from sciml.train import load_config, train

ADSORBATE_ELEMENTS = {1, 6, 7, 8}


@pytest.fixture(scope="module")
def relaxations():
    return relax_adsorbates(6, seed=1, max_steps=10)


@pytest.fixture(scope="module")
def dataset(relaxations, tmp_path_factory):
    directory = tmp_path_factory.mktemp("oc20")
    paths = write_oc20_dataset(relaxations, directory, frames_per_file=25)
    return paths


def assert_records_equal(actual, expected, atol=0.0, skip=()):
    assert set(actual) == set(expected) - set(skip), (sorted(actual), sorted(expected))
    for name, value in actual.items():
        reference = np.asarray(expected[name])
        if value.dtype.kind == "f" and atol:
            np.testing.assert_allclose(value, reference, rtol=0, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(value, reference.astype(value.dtype), err_msg=name)


# ----------------------------------------------------------------------------- generator


@pytest.mark.slow
def test_generator_tags_fixed_atoms_and_reproducibility(relaxations):
    assert len(relaxations) == 6
    for relaxation in relaxations:
        first = relaxation.frames[0]
        tags, numbers = first.get_tags(), first.numbers
        adsorbate = np.isin(numbers, list(ADSORBATE_ELEMENTS))
        slab_z = first.positions[~adsorbate, 2]
        top_layer = np.zeros(len(first), dtype=bool)
        top_layer[np.flatnonzero(~adsorbate)[slab_z > slab_z.max() - 0.5]] = True  # 2x2 top layer, rattled by ~0.05 Å
        assert top_layer.sum() == 4
        np.testing.assert_array_equal(tags[adsorbate], 2)
        np.testing.assert_array_equal(tags[top_layer], 1)
        np.testing.assert_array_equal(tags[~adsorbate & ~top_layer], 0)
        fixed = first.constraints[0].index
        np.testing.assert_array_equal(np.sort(fixed), np.flatnonzero(tags == 0))
        # fixed atoms never move; the relaxation lowers the energy
        for frame in relaxation.frames:
            np.testing.assert_array_equal(frame.positions[fixed], first.positions[fixed])
        assert relaxation.frames[-1].calc.results["energy"] < first.calc.results["energy"]
        assert len(relaxation.frames) <= 11
    again = relax_adsorbates(6, seed=1, max_steps=10)
    other = relax_adsorbates(6, seed=2, max_steps=10)
    for a, b in zip(relaxations, again):
        assert a.description == b.description and a.reference_energy == b.reference_energy
        np.testing.assert_array_equal(a.frames[-1].positions, b.frames[-1].positions)
    assert [r.description for r in other] != [r.description for r in relaxations]


def test_generator_rejects_unknown_choices():
    with pytest.raises(ValueError, match="unknown metal 'Fe'"):
        relax_adsorbates(1, metals=["Fe"])
    with pytest.raises(ValueError, match="unknown adsorbate 'CH4'"):
        relax_adsorbates(1, adsorbates=["CH4"])


# ----------------------------------------------------------------------------- S2EF extxyz


@pytest.mark.slow
def test_s2ef_extxyz_round_trip(relaxations, dataset):
    expected = list(s2ef_records(relaxations))
    files = sorted(p.name for p in dataset["s2ef"].iterdir())
    assert files[:2] == ["0.extxyz.xz", "0.txt"] and len(files) == 2 * -(-len(expected) // 25)
    first_line = (dataset["s2ef"] / "0.txt").read_text().splitlines()[0]
    sid, fid, reference = first_line.split(",")
    assert (sid, fid, float(reference)) == ("random0", "frame0", relaxations[0].reference_energy)
    records = list(read_s2ef_extxyz(dataset["s2ef"]))
    assert len(records) == len(expected)
    for record, reference in zip(records, expected):
        assert_records_equal(record, reference, atol=1e-7)  # extxyz keeps 8 decimals of positions and forces
        assert record["energy"] == reference["total_energy"] - reference["reference_energy"]
        assert record["fixed"].dtype == bool and record["fixed"].any() and not record["fixed"].all()
    totals = list(read_s2ef_extxyz(dataset["s2ef"], subtract_reference=False))
    assert all(r["energy"] == r["total_energy"] != e["energy"] for r, e in zip(totals, expected))


def test_s2ef_companion_errors(dataset, tmp_path):
    source = dataset["s2ef"]
    (tmp_path / "0.extxyz.xz").write_bytes((source / "0.extxyz.xz").read_bytes())
    lines = (source / "0.txt").read_text().splitlines()
    with pytest.raises(ValueError, match=r"0\.extxyz\.xz: no companion 0\.txt or 0\.txt\.xz"):
        list(read_s2ef_extxyz(tmp_path))
    (tmp_path / "0.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=rf"0\.txt: has {len(lines) - 1} lines but .*0\.extxyz\.xz has {len(lines)} frames"):
        list(read_s2ef_extxyz(tmp_path))
    (tmp_path / "0.txt").write_text("\n".join(lines[:2] + ["random5,frame2"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"0\.txt: line 3: expected 'random<sid>,frame<fid>,<reference energy>'"):
        list(read_s2ef_extxyz(tmp_path))
    (tmp_path / "0.txt").unlink()
    with lzma.open(tmp_path / "0.txt.xz", "wt") as handle:  # compressed companions are read too
        handle.write("\n".join(lines) + "\n")
    assert len(list(read_s2ef_extxyz(tmp_path / "0.extxyz.xz"))) == len(lines)
    text = lzma.open(source / "0.extxyz.xz", "rt").read()
    (tmp_path / "0.extxyz.xz").write_bytes(lzma.compress(text.replace("\nCu ", "\nXx ", 1).replace("\nPt ", "\nXx ", 1)
                                                         .replace("\nAg ", "\nXx ", 1).encode()))
    with pytest.raises(ValueError, match=r"0\.extxyz\.xz: unknown element symbol 'Xx'"):
        list(read_s2ef_extxyz(tmp_path))
    with pytest.raises(ValueError, match="no such file or directory"):
        list(read_s2ef_extxyz(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no \*\.extxyz\.xz or \*\.extxyz files"):
        list(read_s2ef_extxyz(tmp_path / "empty"))


# ----------------------------------------------------------------------------- ASE database


@pytest.mark.parametrize("suffix", [".db", ".json"])
def test_ase_db_round_trip(relaxations, dataset, tmp_path, suffix):
    expected = list(s2ef_records(relaxations))
    if suffix == ".db":
        path = dataset["ase_db"]
    else:
        frames = [a for r in relaxations for a in r.frames]
        pairs = [{"sid": r.sid, "fid": f, "reference_energy": r.reference_energy}
                 for r in relaxations for f in range(len(r.frames))]
        path = write_ase_db(tmp_path / f"adslabs{suffix}", frames, pairs)
    records = list(read_ase_db(path))
    assert len(records) == len(expected)
    for record, reference in zip(records, expected):
        assert_records_equal(record, reference)
    assert detect_format(path) == "ase-db"


def test_ase_db_errors(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        list(read_ase_db(tmp_path / "missing.db"))
    assert not (tmp_path / "missing.db").exists()  # ase.db.connect would have created it
    (tmp_path / "bad.db").write_text("not a database")
    with pytest.raises(ValueError, match="bad.db: not a readable ASE database"):
        list(read_ase_db(tmp_path / "bad.db"))


# ----------------------------------------------------------------------------- legacy LMDB


@pytest.mark.parametrize("pyg_version", [1, 2])
def test_legacy_lmdb_maps_pyg_pickles_back_without_torch_geometric(relaxations, tmp_path, pyg_version):
    expected = list(s2ef_records(relaxations))
    path = tmp_path / "data.lmdb"
    assert write_legacy_lmdb(path, expected, pyg_version=pyg_version) == len(expected)
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        raw = txn.get(b"0")
        assert pickle.loads(txn.get(b"length")) == len(expected)
    env.close()
    assert b"torch_geometric.data.data\nData" in raw  # the pickle names the real PyG class
    assert (b"GlobalStorage" in raw) == (pyg_version == 2)
    db = LegacyLmdb(path)
    assert len(db) == len(expected)
    for index in (0, 7, len(expected) - 1):
        record = db[index]
        reference = expected[index]
        assert_records_equal(record, reference, skip=("total_energy", "reference_energy"), atol=1e-6)
        np.testing.assert_array_equal(record["positions"], reference["positions"].astype(np.float32))
        assert record["positions"].dtype == np.float32 and record["atomic_numbers"].dtype == np.int64
        assert record["energy"] == reference["energy"]
    assert "torch_geometric" not in sys.modules
    graph = graph_from_record(db[0], cutoff=5.0)
    assert graph.num_edges > 0 and graph.atom_properties["fixed"].dtype == torch.bool
    assert torch.equal(graph.atom_properties["tags"], torch.from_numpy(expected[0]["tags"]))


def test_legacy_lmdb_shards_and_is2re(relaxations, dataset, tmp_path):
    records = list(s2ef_records(relaxations))
    shards = tmp_path / "shards"
    write_legacy_lmdb(shards / "data.0000.lmdb", records[:10])
    write_legacy_lmdb(shards / "data.0001.lmdb", records[10:25], pyg_version=1)
    db = LegacyLmdb(shards)
    assert len(db) == 25 and detect_format(shards) == "legacy-lmdb"
    assert [int(db[i]["fid"]) for i in range(25)] == [int(r["fid"]) for r in records[:25]]
    is2re = LegacyLmdb(dataset["is2re_lmdb"])
    expected = list(is2re_records(relaxations))
    assert len(is2re) == len(relaxations)
    for record, reference in zip(is2re, expected):
        assert set(record) == set(reference)
        assert record["relaxed_energy"] == reference["relaxed_energy"]
        assert record["initial_energy"] == reference["initial_energy"]
        np.testing.assert_array_equal(record["relaxed_positions"], reference["relaxed_positions"].astype(np.float32))
    graph = graph_from_record(is2re[0])
    assert graph.energy is None and float(graph.properties["relaxed_energy"]) == pytest.approx(float(expected[0]["relaxed_energy"]))
    assert graph.atom_properties["relaxed_positions"].shape == (graph.num_nodes, 3)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _one_record_lmdb(path, value: bytes) -> None:
    write_lmdb(path, [(b"0", value), (b"length", pickle.dumps(1))])


def test_malicious_pickles_are_refused(tmp_path, relaxations):
    marker = tmp_path / "pwned"
    _one_record_lmdb(tmp_path / "direct.lmdb", pickle.dumps(_RunsShell(marker)))
    with pytest.raises(ValueError, match=r"direct\.lmdb: record 0: refusing to unpickle (posix|os)\.system"):
        LegacyLmdb(tmp_path / "direct.lmdb")[0]
    # hidden inside the fields of an otherwise valid PyG 2.x Data
    fields = fairchem_fields(next(s2ef_records(relaxations)))
    fields["payload"] = _RunsShell(marker)
    _one_record_lmdb(tmp_path / "nested.lmdb", pyg_data_pickle(fields, 2))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        LegacyLmdb(tmp_path / "nested.lmdb")[0]
    # hidden inside a tensor storage (torch.storage._load_from_bytes runs torch.load)
    buffer = io.BytesIO()
    torch.save(_RunsShell(marker), buffer, _use_new_zipfile_serialization=False)

    class _Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (buffer.getvalue(),)

    _one_record_lmdb(tmp_path / "storage.lmdb", pickle.dumps({"pos": _Storage()}))
    with pytest.raises(ValueError, match=r"storage\.lmdb: record 0: corrupted record .*(Weights only|weights_only)"):
        LegacyLmdb(tmp_path / "storage.lmdb")[0]
    assert not marker.exists()


def test_legacy_lmdb_bad_records_give_clear_errors(tmp_path, relaxations):
    record = next(s2ef_records(relaxations))
    good = pyg_data_pickle(fairchem_fields(record), 2)
    write_lmdb(tmp_path / "bad.lmdb", [(b"0", good), (b"1", good[: len(good) // 2]), (b"3", good),
                                       (b"length", pickle.dumps(3))])
    db = LegacyLmdb(tmp_path / "bad.lmdb")
    assert db[0]["positions"].shape == record["positions"].shape
    with pytest.raises(ValueError, match=r"bad\.lmdb: record 1: corrupted record"):
        db[1]
    with pytest.raises(ValueError, match=r"bad\.lmdb: record 2: missing"):
        db[2]
    for change, message in [
        (lambda f: f.pop("pos"), r"record 0: missing field\(s\) positions"),
        (lambda f: f.update(atomic_numbers=torch.full_like(f["atomic_numbers"], 200)), "unknown element: atomic number 200"),
        (lambda f: f.update(natoms=3), "natoms is 3 but pos has"),
        (lambda f: f.update(force=f.pop("forces")[:2]), r"forces must have shape \(\d+, 3\)"),
    ]:
        fields = fairchem_fields(record)
        change(fields)
        _one_record_lmdb(tmp_path / "one.lmdb", pyg_data_pickle(fields, 2))
        with pytest.raises(ValueError, match=message):
            LegacyLmdb(tmp_path / "one.lmdb")[0]
    write_lmdb(tmp_path / "long.lmdb", [(b"0", good), (b"length", pickle.dumps(5))])
    with pytest.raises(ValueError, match=r"long\.lmdb: 'length' entry says 5 but the file holds 1 records"):
        LegacyLmdb(tmp_path / "long.lmdb")
    (tmp_path / "text.lmdb").write_text("not an lmdb")
    with pytest.raises(ValueError, match=r"text\.lmdb: not a readable LMDB file"):
        LegacyLmdb(tmp_path / "text.lmdb")


# ----------------------------------------------------------------------------- cache


@pytest.mark.parametrize("source", ["s2ef", "s2ef_lmdb", "is2re_lmdb", "ase_db"])
def test_cache_round_trips_exactly(dataset, tmp_path, source):
    path = tmp_path / "cache.lmdb"
    meta = preprocess(dataset[source], path)
    expected = list(iter_records(dataset[source]))
    cache = CachedDataset(path)
    assert len(cache) == meta["count"] == len(expected)
    assert meta["source"] == str(dataset[source]) and meta["sciml_version"] and meta["read_options"]["subtract_reference"]
    assert meta["fields"] == {name: value.dtype.str for name, value in expected[0].items()}
    np.testing.assert_array_equal(cache.natoms, [len(r["positions"]) for r in expected])
    for index, reference in enumerate(expected):
        record = cache.record(index)
        assert list(record) == list(reference)
        for name, value in record.items():
            assert value.dtype == reference[name].dtype and value.shape == reference[name].shape, name
            np.testing.assert_array_equal(value, reference[name], err_msg=name)
    assert detect_format(path) == "sciml-cache"
    with pytest.raises(ValueError, match="already exists; pass force=True"):
        preprocess(dataset[source], path)
    with pytest.raises(ValueError, match="not a sciml OC20 cache"):
        CachedDataset(dataset["s2ef_lmdb"])


def test_cache_corrupted_record(dataset, tmp_path):
    path = tmp_path / "cache.lmdb"
    preprocess(dataset["s2ef_lmdb"], path)
    env = lmdb.open(str(path), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"3", txn.get(b"3")[:-10])
    env.close()
    with pytest.raises(ValueError, match=r"cache\.lmdb: record 3: corrupted record"):
        CachedDataset(path)[3]


@pytest.mark.slow
def test_cache_dataset_with_workers_and_balanced_sampler(dataset, tmp_path):
    path = tmp_path / "cache.lmdb"
    preprocess(dataset["s2ef"], path)
    cache = CachedDataset(path, cutoff=5.0, max_neighbors=20)
    cache[0]  # an environment opened in the parent must not be used by the workers
    loader = DataLoader(cache, batch_size=4, num_workers=2, collate_fn=AtomicGraph.collate)
    seen = []
    for batch in loader:
        assert batch.cutoff == 5.0 and batch.num_edges > 0
        seen += list(zip(batch.properties["sid"].tolist(), batch.properties["fid"].tolist()))
    expected = [(int(r["sid"]), int(r["fid"])) for r in iter_records(dataset["s2ef"])]
    assert seen == expected
    single = cache[5]
    rebuilt = graph_from_record(cache.record(5)).to(dtype=torch.float32).with_edges(5.0, 20)
    assert torch.equal(single.edge_index, rebuilt.edge_index) and torch.equal(single.cell_shifts, rebuilt.cell_shifts)
    sampler = AtomBalancedBatchSampler(cache.natoms, max_atoms=60, seed=3)
    loader = DataLoader(cache, batch_sampler=sampler, num_workers=2, collate_fn=AtomicGraph.collate)
    sizes = [batch.num_nodes for batch in loader]
    assert max(sizes) <= 60 and sum(sizes) == int(cache.natoms.sum())


# ----------------------------------------------------------------------------- sources, trainer, CLI


@pytest.mark.slow
def test_detect_format_and_load_graphs(dataset, tmp_path):
    assert detect_format(dataset["s2ef"]) == "s2ef-extxyz"
    assert detect_format(dataset["s2ef"] / "0.extxyz.xz") == "s2ef-extxyz"
    assert detect_format(dataset["s2ef_lmdb"]) == "legacy-lmdb"
    plain = tmp_path / "plain.extxyz"
    ase.io.write(plain, ase.io.read(dataset["s2ef"] / "0.extxyz.xz", "0"))
    assert detect_format(plain) is None  # no companion: an ordinary extxyz file
    with pytest.raises(ValueError, match="not an OC20 source"):
        list(iter_records(plain))
    graphs = load_graphs(dataset["s2ef"], cutoff=5.0)
    lmdb_graphs = load_graphs(dataset["s2ef_lmdb"], cutoff=5.0)
    assert len(graphs) == len(lmdb_graphs)
    assert sorted(graphs[0].properties) == ["fid", "reference_energy", "sid", "total_energy"]
    assert sorted(graphs[0].atom_properties) == ["fixed", "tags"]
    batch = AtomicGraph.collate(graphs[:3])
    assert batch.atom_properties["tags"].shape == (batch.num_nodes,)
    torch.testing.assert_close(batch.energy, AtomicGraph.collate(lmdb_graphs[:3]).energy)


@pytest.mark.parametrize("source", ["s2ef", "s2ef_lmdb"])
@pytest.mark.slow
def test_sciml_train_runs_on_oc20_sources(dataset, tmp_path, source):
    config = load_config(None, {
        "data.path": str(dataset[source]), "model.name": "egnn",
        "model.options": {"hidden": 8, "layers": 1, "cutoff": 4.0}, "epochs": 1, "batch_size": 8,
        "output_dir": str(tmp_path / "run"),
    })
    result = train(config, verbose=False)
    assert np.isfinite(result.best_valid_loss)
    assert {"energy_mae_meV", "forces_mae_meV_per_A"} <= set(result.test_metrics)
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits["num_structures"] == sum(1 for _ in iter_records(dataset[source]))


def test_trainer_rejects_is2re_without_energies(dataset, tmp_path):
    config = load_config(None, {"data.path": str(dataset["is2re_lmdb"]), "output_dir": str(tmp_path / "run"),
                                "model.options": {"hidden": 8, "layers": 1, "cutoff": 4.0}})
    with pytest.raises(ValueError, match="has no energy labels .*relaxed_energy"):
        train(config, verbose=False)


@pytest.mark.slow
def test_cli_generate_and_preprocess(tmp_path, capsys):
    output = tmp_path / "emt"
    args = ["data", "generate", "oc20", "--systems", "2", "--max-steps", "3", "--metals", "Pt", "--output", str(output)]
    assert main(args) == 0
    assert "wrote 2 relaxations" in capsys.readouterr().out
    assert (output / "s2ef" / "0.extxyz.xz").is_file() and (output / "is2re.lmdb").is_file()
    assert {a.symbol for a in ase.io.read(output / "s2ef" / "0.extxyz.xz", ":")[0]} <= {"Pt", "H", "C", "N", "O"}
    assert main(args) == 2
    assert "already exists and is not an empty directory; pass --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    cache = tmp_path / "cache.lmdb"
    assert main(["data", "preprocess", str(output / "s2ef"), "--output", str(cache)]) == 0
    assert f"to {cache}" in capsys.readouterr().out
    assert main(["data", "preprocess", str(output / "s2ef"), "--output", str(cache)]) == 2
    assert main(["data", "generate", "oc20", "--metals", "Fe", "--output", str(tmp_path / "x")]) == 2
    assert "unknown metal 'Fe'" in capsys.readouterr().err

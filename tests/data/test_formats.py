"""The format registry: built-in formats, detection, errors, and a format added by this file alone."""

import json
import math
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from sciml.batch_inference import predict_structures
from sciml.data import read_structures
from sciml.data.formats import (
    CRYSTALS,
    FIELDS,
    KINDS,
    OC20,
    STRUCTURES,
    DataFormat,
    detect_format,
    format_names,
    get_format,
    register_format,
    unregister_format,
)
from sciml.data.oc20 import iter_records, write_ase_db, write_cache, write_legacy_lmdb, write_s2ef_extxyz
from sciml.data.pde import write_fno_mat
from sciml.data.structure_index import index_structures
from sciml.inference import load_model
from sciml.train import Trainer, load_config
from sciml.train.atomistic import training_format
from sciml.train.config import DataConfig, TrainConfig

DATASETS = Path(__file__).resolve().parents[2] / "datasets"
BUILTIN = {
    "ase": STRUCTURES,
    "oc20": OC20, "s2ef-extxyz": OC20, "ase-db": OC20, "legacy-lmdb": OC20, "sciml-cache": OC20,
    "jarvis": CRYSTALS, "matbench": CRYSTALS, "mp": CRYSTALS, "cif": CRYSTALS,
    "fno_mat": FIELDS, "pdebench": FIELDS,
}


def emt_slabs(count: int):
    """Small Cu slabs with an adsorbed O atom at random heights, labelled by EMT."""
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(count):
        slab = ase.build.fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
        ase.build.add_adsorbate(slab, "O", float(rng.uniform(1.2, 2.0)), "fcc")
        slab.rattle(0.05, seed=int(rng.integers(1000)))
        slab.calc = EMT()
        slab.calc = SinglePointCalculator(slab, energy=slab.get_potential_energy(), forces=slab.get_forces())
        frames.append(slab)
    return frames


def test_every_builtin_format_is_registered_with_its_kind():
    names = format_names()
    assert set(BUILTIN) <= set(names)
    assert len(names) == len(set(names))
    for name, kind in BUILTIN.items():
        entry = get_format(name)
        assert entry.name == name and entry.kind == kind and callable(entry.read)
    assert set(format_names(CRYSTALS)) == {"jarvis", "matbench", "mp", "cif"}
    assert set(format_names(FIELDS)) == {"fno_mat", "pdebench"}
    # only structure files are streamed by sciml predict
    assert [n for n in BUILTIN if get_format(n).streamable] == ["ase"]
    assert all(get_format(n).kind in KINDS for n in names)


def test_detection_picks_the_format_of_each_sample_file(tmp_path):
    crystals = DATASETS / "crystals_emt"
    assert detect_format(crystals / "dft_3d.json", CRYSTALS).name == "jarvis"
    assert detect_format(crystals / "matbench_formation_energy_peratom.json.gz", CRYSTALS).name == "matbench"
    (tmp_path / "mp.json").write_text(json.dumps([{"material_id": "mp-1", "structure": {}}]))
    assert detect_format(tmp_path / "mp.json", CRYSTALS).name == "mp"
    ase.io.write(tmp_path / "Cu.cif", ase.build.bulk("Cu"))
    assert detect_format(tmp_path / "Cu.cif", CRYSTALS).name == "cif"

    frames = emt_slabs(3)
    s2ef = tmp_path / "s2ef"
    s2ef.mkdir()
    write_s2ef_extxyz(s2ef / "0", frames, [(7, k, -1.0) for k in range(3)])
    records = list(iter_records(s2ef))
    write_ase_db(tmp_path / "slabs.db", frames)
    write_legacy_lmdb(tmp_path / "legacy.lmdb", records)
    write_cache(tmp_path / "cache.lmdb", records, "test")
    expected = {s2ef: "s2ef-extxyz", s2ef / "0.extxyz.xz": "s2ef-extxyz", tmp_path / "slabs.db": "ase-db",
                tmp_path / "legacy.lmdb": "legacy-lmdb", tmp_path / "cache.lmdb": "sciml-cache"}
    assert {path: detect_format(path, OC20).name for path in expected} == expected
    # without a named format only the OC20 sources the trainer reads the OC20 way are recognised:
    # an ASE database, a crystal dataset or an extxyz file go to the default reader
    assert {path: getattr(detect_format(path), "name", None) for path in expected} == {
        **expected, tmp_path / "slabs.db": None}
    assert detect_format(crystals / "dft_3d.json") is None
    assert detect_format(DATASETS / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz") is None
    assert training_format(DataConfig(path=str(tmp_path / "cache.lmdb"))).name == "sciml-cache"
    assert training_format(DataConfig(path=str(tmp_path / "slabs.db"))).name == "ase"

    u = np.zeros((2, 4, 4, 3), dtype=np.float32)
    write_fno_mat(tmp_path / "ns.mat", u=u, a=u[..., 0], t=np.arange(3.0))
    assert detect_format(tmp_path / "ns.mat", FIELDS).name == "fno_mat"
    assert detect_format(tmp_path / "ns.mat") is None


def test_unknown_formats_are_refused_naming_the_registered_ones():
    with pytest.raises(ValueError, match="unknown data format 'xyzz'; registered formats: ase, ") as err:
        get_format("xyzz")
    assert all(name in str(err.value) for name in BUILTIN)
    with pytest.raises(ValueError) as err:
        TrainConfig.from_dict({"data": {"path": "x.xyz", "format": "jarviss"}})
    message = str(err.value)
    assert "\n" not in message and message.startswith("config key data.format must be one of ")
    assert all(name in message for name in BUILTIN) and "did you mean 'jarvis'?" in message
    with pytest.raises(ValueError, match="kind must be one of"):
        DataFormat(name="bad", kind="images", read=list)
    with pytest.raises(ValueError, match="only formats of kind structures"):
        DataFormat(name="bad", kind=FIELDS, read=list, streamable=True)
    with pytest.raises(ValueError, match="'ase' is registered already"):
        register_format(DataFormat(name="ase", kind=STRUCTURES, read=list))


# ---------------------------------------------------------------- a new format, defined here only
def read_toy_jsonl(path: Path):
    """One structure per line: {"symbols": [...], "positions": [[x, y, z], ...], "energy": eV}."""
    frames = []
    for line in Path(path).read_text().splitlines():
        entry = json.loads(line)
        atoms = ase.Atoms(entry["symbols"], positions=entry["positions"])
        if "energy" in entry:
            atoms.info["energy"] = entry["energy"]
        frames.append(atoms)
    return frames


@pytest.fixture
def toy_format():
    entry = register_format(DataFormat(
        name="toy-jsonl", kind=STRUCTURES, read=read_toy_jsonl, detect=lambda path: path.suffix == ".jsonl",
        auto_detect=True, streamable=True, description="JSON lines of structures with energies"))
    yield entry
    unregister_format("toy-jsonl")
    assert "toy-jsonl" not in format_names()


def write_toy_jsonl(path: Path, count: int) -> None:
    """Stretched and bent water molecules with a harmonic energy (eV) of their geometry."""
    rng = np.random.default_rng(1)
    lines = []
    for _ in range(count):
        water = ase.build.molecule("H2O")
        water.positions += rng.normal(scale=0.08, size=water.positions.shape)
        r1, r2 = water.get_distance(0, 1), water.get_distance(0, 2)
        energy = 4.0 * ((r1 - 0.97) ** 2 + (r2 - 0.97) ** 2) - 14.2
        lines.append(json.dumps({"symbols": water.get_chemical_symbols(), "positions": water.positions.tolist(),
                                 "energy": energy}))
    path.write_text("\n".join(lines) + "\n")


def test_a_format_registered_in_a_test_is_trained_and_predicted(toy_format, tmp_path):
    data = tmp_path / "waters.jsonl"
    write_toy_jsonl(data, 24)
    with pytest.raises(ValueError):
        read_structures(data)  # the structure-file reader cannot read it: the toy reader must

    assert "toy-jsonl" in format_names(STRUCTURES)
    assert detect_format(data) is toy_format and training_format(DataConfig(path=str(data))) is toy_format

    config = load_config(None, [f"data.path={data}", "data.format=toy-jsonl", "data.forces_key=null",
                                "data.stress_key=null", f"output_dir={tmp_path / 'run'}",
                                "model.options={hidden: 16, layers: 1}", "split.valid=4", "split.test=4",
                                "batch_size=8", "epochs=2", "loss.forces=0"])
    trainer = Trainer(config, verbose=False)
    assert len(trainer.samples) == 24 and all(g.energy is not None for g in trainer.samples)
    result = trainer.fit()
    assert result.last_epoch == 2 and math.isfinite(result.best_valid_loss)
    assert math.isfinite(result.test_metrics["energy_mae_meV"])

    model = load_model(tmp_path / "run" / "best.pt")
    items, errors = index_structures([str(data)])
    assert errors == [] and len(items) == 24 and {item.kind for item in items} == {"format"}
    records, skipped = predict_structures(model, [str(data)], batch_size=5)
    assert skipped == []
    assert [r["index"] for r in records] == list(range(24))
    assert all(r["formula"] == "H2O" and r["atoms"] == 3 and math.isfinite(r["energy"]) for r in records)

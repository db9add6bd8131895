"""Batch inference (`sciml predict`): workers, ranks and resumable output give the plain predict() results."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import ase.db
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import read, write

from sciml.batch_inference import predict_structures, predict_to_file
from sciml.cli.main import main
from sciml.data.crystals import read_cif
from sciml.inference import load_model, predict
from sciml.io import save_checkpoint
from sciml.models import build_model

ROOT = Path(__file__).resolve().parents[2]
ETHANOL = ROOT / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"
BATCH = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny untrained EGNN checkpoint, 20 ethanol frames in one extxyz, a 3-row ase database and 3 CIFs."""
    folder = tmp_path_factory.mktemp("batch_inference")
    torch.manual_seed(0)
    model = build_model("egnn", hidden=8, layers=1, cutoff=4.0).double()
    save_checkpoint(folder / "model.pt", model.state_dict(), model.model_name, options=model.options.to_dict())
    frames = read(ETHANOL, ":23")
    write(folder / "ethanol.extxyz", frames[:20])
    with ase.db.connect(folder / "ethanol.db") as db:
        for atoms in frames[20:]:
            db.write(atoms)
    crystals = {"cu": bulk("Cu", cubic=True), "nacl": bulk("NaCl", "rocksalt", a=5.64), "si": bulk("Si")}
    for name, atoms in crystals.items():
        write(folder / f"{name}.cif", atoms)
    files = [str(folder / name) for name in ("ethanol.extxyz", "cu.cif", "ethanol.db", "nacl.cif", "si.cif")]
    return folder, files


def expected_rows(files, model):
    """predict() of every file on its own, in input order."""
    rows = []
    for path in files:
        structures = [read_cif(path)] if path.endswith(".cif") else read(path, ":")
        rows += predict(structures, model)
    return rows


def counted(model):
    """Record the number of structures of every model call."""
    calls = []
    forward = model.forward

    def forward_counting(batch, *args, **kwargs):
        calls.append(batch.num_graphs)
        return forward(batch, *args, **kwargs)

    model.forward = forward_counting
    return calls


def same_predictions(path_a, path_b):
    rows_a, rows_b = json.loads(Path(path_a).read_text()), json.loads(Path(path_b).read_text())
    assert [(r["file"], r["index"]) for r in rows_a] == [(r["file"], r["index"]) for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        assert a["energy_eV"] == pytest.approx(b["energy_eV"], rel=1e-12, abs=1e-12)
        assert np.allclose(a["forces_eV_per_A"], b["forces_eV_per_A"], rtol=1e-10, atol=1e-12)


def interrupted(model, files, output, after, **options):
    """Run predict_to_file and "crash" after ``after`` batches; the parts folder stays."""

    def crash(batches):
        if batches == after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_to_file(model, files, output, batch_size=BATCH, on_batch=crash, **options)
    assert Path(f"{output}.parts").is_dir()


@pytest.mark.slow
def test_workers_give_the_results_of_predict(inputs, tmp_path, capsys):
    folder, files = inputs
    listing = tmp_path / "cifs.txt"
    listing.write_text("# the crystals\n" + "\n".join(files[3:]) + "\n\n")
    output = tmp_path / "predictions.json"
    code = main(["predict", "--checkpoint", str(folder / "model.pt"), *files[:3], "--files-from", str(listing),
                 "--workers", "2", "--batch-size", str(BATCH), "--output", str(output)])
    assert code == 0
    assert "wrote predictions for 26 structures" in capsys.readouterr().out
    rows = json.loads(output.read_text())
    expected = expected_rows(files, load_model(folder / "model.pt"))
    assert [(Path(r["file"]).name, r["index"]) for r in rows] == (
        [("ethanol.extxyz", k) for k in range(20)] + [("cu.cif", 0)] + [("ethanol.db", k) for k in range(3)]
        + [("nacl.cif", 0), ("si.cif", 0)])
    for row, want in zip(rows, expected):
        assert row["energy_eV"] == pytest.approx(want["energy"], rel=1e-10, abs=1e-12)
        assert np.allclose(row["forces_eV_per_A"], want["forces"], rtol=1e-8, atol=1e-12)
        assert ("stress_eV_per_A3" in row) == ("stress" in want)
        if "stress" in want:
            assert np.allclose(row["stress_eV_per_A3"], want["stress"], rtol=1e-8, atol=1e-12)
    assert not Path(f"{output}.parts").exists()
    extxyz = tmp_path / "predictions.extxyz"
    assert main(["predict", "--checkpoint", str(folder / "model.pt"), *files, "--output", str(extxyz)]) == 0
    frames = read(extxyz, ":")
    assert len(frames) == 26 and frames[21].info["sciml_energy"] == pytest.approx(rows[21]["energy_eV"], abs=1e-12)
    assert np.allclose(frames[0].arrays["sciml_forces"], rows[0]["forces_eV_per_A"])


def test_an_interrupted_run_resumes_without_recomputing(inputs, tmp_path):
    folder, files = inputs
    model = load_model(folder / "model.pt")
    reference = tmp_path / "reference.json"
    predict_to_file(model, files, reference, batch_size=BATCH)
    output = tmp_path / "predictions.json"
    interrupted(model, files, output, after=3)
    lines = (tmp_path / "predictions.json.parts" / "rank-0.jsonl").read_text().splitlines()
    assert len(lines) == 3 * BATCH and not output.exists()
    calls, log = counted(model), []
    summary = predict_to_file(model, files, output, batch_size=BATCH, log=log.append)
    assert log == [f"resuming: {3 * BATCH} of 26 structures already predicted"]
    assert sum(calls) == 26 - 3 * BATCH and summary.predicted == 26 and summary.resumed == 3 * BATCH
    same_predictions(output, reference)
    assert not Path(f"{output}.parts").exists()


def test_a_line_cut_short_by_the_kill_is_predicted_again(inputs, tmp_path):
    folder, files = inputs
    model = load_model(folder / "model.pt")
    reference = tmp_path / "reference.json"
    predict_to_file(model, files, reference, batch_size=BATCH)
    output = tmp_path / "predictions.json"
    interrupted(model, files, output, after=2)
    part = tmp_path / "predictions.json.parts" / "rank-0.jsonl"
    text = part.read_bytes()
    last = text.splitlines()[-1]
    part.write_bytes(text[:len(text) - len(last) // 2 - 1])  # the last line cut in half, without its newline
    calls, log = counted(model), []
    predict_to_file(model, files, output, batch_size=BATCH, log=log.append)
    assert log == [f"resuming: {2 * BATCH - 1} of 26 structures already predicted"]
    assert sum(calls) == 26 - (2 * BATCH - 1)
    same_predictions(output, reference)


def test_bad_structures_are_recorded_and_not_retried(inputs, tmp_path):
    folder, files = inputs
    frames = read(files[0], ":6")
    frames[1].positions[1] += 50.0  # an atom without neighbours
    mixed = tmp_path / "mixed.extxyz"
    write(mixed, frames)
    model = load_model(folder / "model.pt")
    output = tmp_path / "predictions.csv"
    job = {"checkpoint_sha256": "a"}
    interrupted(model, [str(mixed)], output, after=1, job=job)
    with pytest.raises(ValueError, match="another job"):
        predict_to_file(model, [str(mixed)], output, job={"checkpoint_sha256": "b"})
    calls, log = counted(model), []
    summary = predict_to_file(model, [str(mixed)], output, batch_size=BATCH, job=job, log=log.append)
    assert log == ["resuming: 4 of 6 structures already predicted"]  # the bad frame is not tried again
    assert sum(calls) == 2 and summary.predicted == 5
    assert len(summary.skipped) == 1 and "frame 1" in summary.skipped[0] and "no neighbour" in summary.skipped[0]
    assert len(output.read_text().splitlines()) == 1 + 5
    interrupted(model, [str(mixed)], tmp_path / "again.csv", after=1)
    log = []
    predict_to_file(model, [str(mixed)], tmp_path / "again.csv", batch_size=BATCH, retry_errors=True, log=log.append)
    assert log == ["resuming: 3 of 6 structures already predicted"]  # the bad frame is tried again
    interrupted(model, [str(mixed)], tmp_path / "third.csv", after=1)
    calls.clear()
    predict_to_file(model, [str(mixed)], tmp_path / "third.csv", batch_size=BATCH, force=True)
    assert sum(calls) == 5  # --force: from scratch


def test_a_structure_the_model_rejects_is_skipped_alone(inputs):
    folder, files = inputs
    model = load_model(folder / "model.pt")
    forward = model.forward

    def no_copper(batch, *args, **kwargs):
        if bool((batch.atomic_numbers == 29).any()):
            raise ValueError("copper is not in the training set")
        return forward(batch, *args, **kwargs)

    model.forward = no_copper
    records, skipped = predict_structures(model, files, batch_size=BATCH)
    assert len(records) == 25 and "cu.cif" not in {Path(r["file"]).name for r in records}
    assert skipped == [f"{files[1]}: the model failed: copper is not in the training set"]


@pytest.mark.skipif(importlib.util.find_spec("torch.distributed.run") is None or not torch.distributed.is_available(),
                    reason="torchrun is not available")
@pytest.mark.slow
def test_two_ranks_give_the_one_process_output(inputs, tmp_path):
    folder, files = inputs
    single = tmp_path / "single.json"
    assert main(["predict", "--checkpoint", str(folder / "model.pt"), *files, "--batch-size", str(BATCH),
                 "--output", str(single)]) == 0
    output = tmp_path / "ranks.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "sciml.cli.main", "predict", "--checkpoint", str(folder / "model.pt"), *files,
               "--batch-size", str(BATCH), "--output", str(output)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote predictions for 26 structures") == 1
    same_predictions(output, single)
    assert not Path(f"{output}.parts").exists()

"""Data-parallel training, long-run features and fault tolerance, on CPU with gloo.

Multi-process runs go through ``python -m torch.distributed.run`` (torchrun) and the ``sciml``
command line, as users launch them; single-process checks run in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import pytest
import torch
import yaml

from sciml.cli.main import main
from sciml.graph import AtomicGraph, GraphSpec
from sciml.inference import model_outputs
from sciml.io import load_checkpoint
from sciml.models import build_model
from sciml.train import Trainer, load_config, train
from sciml.train.acceleration import enable_activation_checkpointing
from sciml.train.checkpoints import step_checkpoints

ETHANOL = Path(__file__).resolve().parents[2] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# 96 training structures of equal size (ethanol), so N ranks x batch B equals one rank x N B exactly
SETTINGS = {"model": {"name": "egnn", "options": {"hidden": 64, "layers": 3}}, "split": {"valid": 8, "test": 8},
            "epochs": 3, "batch_size": 4, "optimizer": {"lr": 1e-3}, "seed": 3}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    ase.io.write(folder / "ethanol112.extxyz", ase.io.read(ETHANOL, index=":112"))
    return folder


def write_config(folder: Path, name: str, **changes) -> Path:
    values = {**SETTINGS, "data": {"path": str(folder / "ethanol112.extxyz")}, **changes}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def sciml_command(*args: str, ranks: int = 1, launcher: tuple = ()) -> list:
    """``sciml ARGS`` in a fresh interpreter, under torchrun when ``ranks`` > 1."""
    if ranks == 1:
        return [sys.executable, "-m", "sciml.cli.main", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *launcher,
            "-m", "sciml.cli.main", *args]


def run(*args: str, ranks: int = 1, env=None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(sciml_command(*args, ranks=ranks), env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)


def weights(run_dir: Path, key: str = "state_dict") -> dict:
    return load_checkpoint(run_dir / "last.pt")[key]


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].double(), b[name].double(), rtol=0, atol=atol), name


def file_digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_rank_run(workdir) -> Path:
    """An uninterrupted 2-rank run (batch 4 per rank), the reference of several tests."""
    config = write_config(workdir, "two_ranks")
    out = workdir / "two_ranks"
    result = run("train", str(config), "--output-dir", str(out), ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_ranks_take_the_same_steps_as_one_rank_with_the_global_batch(workdir, two_rank_run):
    config = load_config(write_config(workdir, "one_rank"), [f"output_dir={workdir / 'one_rank'}", "batch_size=8"])
    train(config, verbose=False)
    assert_same_weights(weights(two_rank_run), weights(workdir / "one_rank"), atol=2e-6)
    two, one = (json.loads((folder / "test_metrics.json").read_text())["model"]
                for folder in (two_rank_run, workdir / "one_rank"))
    assert two["forces_mae_meV_per_A"] == pytest.approx(one["forces_mae_meV_per_A"], rel=1e-5)
    # validation in shards (each rank every other structure, error sums combined) gives the
    # whole set's metrics
    for column in ("valid_loss", "valid_forces_rmse_meV_per_A", "valid_energy_mae_meV"):
        two_rows, one_rows = (_column(folder / "metrics.csv", column) for folder in (two_rank_run, workdir / "one_rank"))
        assert two_rows == pytest.approx(one_rows, rel=1e-5)
    # rank 0 alone wrote the log: one row per epoch, with throughput and memory
    lines = (two_rank_run / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + SETTINGS["epochs"]
    assert {"samples_per_s", "atoms_per_s", "peak_memory_mb"} <= set(lines[0].split(","))


def _column(path: Path, name: str) -> list:
    lines = path.read_text().splitlines()
    index = lines[0].split(",").index(name)
    return [float(line.split(",")[index]) for line in lines[1:]]


def _wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> Path:
    """Poll until a step checkpoint at ``step`` or later exists; returns the newest."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        found = step_checkpoints(run_dir)
        if found and int(found[-1].stem.split("-")[1]) >= step:
            return found[-1]
        time.sleep(0.002)
    raise AssertionError(f"no step checkpoint {step} within {timeout} s")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_auto_ends_as_an_uninterrupted_run(workdir):
    config = write_config(workdir, "every_step", checkpoint_every=1, keep_checkpoints=3)
    straight, killed = workdir / "straight", workdir / "killed"
    assert run("train", str(config), "--output-dir", str(straight)).returncode == 0
    process = subprocess.Popen(sciml_command("train", str(config), "--output-dir", str(killed)), env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_step(killed, 30, process)  # epoch 2 of 3 (24 steps per epoch)
    process.send_signal(signal.SIGKILL)
    process.wait()
    newest = step_checkpoints(killed)[-1]
    assert load_checkpoint(newest)["epoch_batches_done"] > 0  # a mid-epoch checkpoint
    resumed = run("train", str(config), "--output-dir", str(killed), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # it continued from the newest checkpoint: only the steps after it were lost
    assert f"resuming from {newest}" in resumed.stderr
    assert_same_weights(weights(straight), weights(killed), atol=0)
    assert_same_weights(weights(straight, "optimizer")["state"][0], weights(killed, "optimizer")["state"][0], atol=0)
    metrics = [json.loads((folder / "test_metrics.json").read_text()) for folder in (straight, killed)]
    assert metrics[0] == metrics[1]
    assert (straight / "metrics.csv").read_text().count("\n") == (killed / "metrics.csv").read_text().count("\n")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_run_resumes(workdir):
    config = write_config(workdir, "sigterm")
    straight, stopped = workdir / "sigterm_straight", workdir / "sigterm_stopped"
    assert run("train", str(config), "--output-dir", str(straight)).returncode == 0
    process = subprocess.Popen(sciml_command("train", str(config), "--output-dir", str(stopped)), env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (stopped / "metrics.csv").exists():  # in epoch 2 of 3
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM after saving" in stderr and "--resume auto" in stderr
    saved = load_checkpoint(step_checkpoints(stopped)[-1])
    assert saved["epoch"] in (1, 2) and saved["global_step"] > 24
    resumed = run("train", str(config), "--output-dir", str(stopped), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(weights(straight), weights(stopped), atol=0)


def _children(pid: int) -> list:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
def test_torchrun_max_restarts_recovers_a_killed_worker(workdir, two_rank_run):
    """A worker SIGKILLed mid-run: torchrun restarts both ranks, --resume auto continues from the
    newest step checkpoint, and the run ends with the uninterrupted run's weights."""
    config = write_config(workdir, "elastic", checkpoint_every=2)
    out = workdir / "elastic"
    command = sciml_command("train", str(config), "--output-dir", str(out), "--resume", "auto", ranks=2,
                            launcher=("--max-restarts=1",))
    agent = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(out, 16, agent)  # 12 steps per epoch on each rank
    workers = _children(agent.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    _, stderr = agent.communicate(timeout=240)
    assert agent.returncode == 0, stderr[-3000:]
    assert stderr.count("resuming from") >= 1
    assert_same_weights(weights(two_rank_run), weights(out), atol=0)


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(workdir, capsys):
    out = workdir / "truncated"
    config = load_config(write_config(workdir, "truncated"), [f"output_dir={out}", "epochs=1", "checkpoint_every=5",
                                                              "keep_checkpoints=10"])
    train(config, verbose=False)
    steps = step_checkpoints(out)
    assert [p.name for p in steps] == [f"step-{n:09d}.pt" for n in (5, 10, 15, 20)]
    for newest in (out / "last.pt", steps[-1]):  # last.pt (step 24) and step 20, cut mid-write
        newest.write_bytes(newest.read_bytes()[:1000])
    before = file_digests(out)
    trainer = Trainer(load_config(None, [*_as_overrides(config)]), resume="auto", verbose=True)
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "last.pt is truncated or corrupted" in err and "step-000000020" in err
    assert trainer.global_step == 15 and trainer.start_epoch == 1 and trainer.resume_position == 15
    checkpoints = {name: digest for name, digest in before.items() if name.endswith(".pt")}
    assert {name: digest for name, digest in file_digests(out).items() if name.endswith(".pt")} == checkpoints


def _as_overrides(config) -> list:
    values = config.to_dict()
    return [f"{key}={json.dumps(values[key])}" for key in values]


@pytest.fixture()
def finished_run(workdir, tmp_path) -> tuple:
    config = write_config(workdir, "finished", epochs=1)
    out = tmp_path / "run"
    train(load_config(config, [f"output_dir={out}"]), verbose=False)
    return config, out


@pytest.mark.slow
def test_unreachable_rendezvous_is_a_clear_error_and_touches_nothing(finished_run):
    config, out = finished_run
    before = file_digests(out)
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "SCIML_DIST_TIMEOUT": "3"}
    result = run("train", str(config), "--output-dir", str(out), "--resume", "auto", env=env, timeout=60)
    assert result.returncode == 2
    assert f"could not join the process group at 127.0.0.1:{port} within 3 s" in result.stderr
    assert "Traceback" not in result.stderr
    assert file_digests(out) == before


@pytest.mark.slow
def test_resuming_with_another_number_of_ranks_is_refused(finished_run):
    config, out = finished_run
    before = file_digests(out)
    result = run("train", str(config), "--output-dir", str(out), "--resume", ranks=2)
    assert result.returncode != 0
    assert "written by a run of 1 rank(s), this one has 2" in result.stderr
    assert file_digests(out) == before


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_refused(finished_run, tmp_path, capsys):
    config, out = finished_run
    other = tmp_path / "other"
    train(load_config(config, [f"output_dir={other}", "model.options={hidden: 32, layers: 2}"]), verbose=False)
    foreign = tmp_path / "foreign.pt"
    payload = load_checkpoint(other / "last.pt")
    payload["model_name"] = "equiformer_v2"
    torch.save(payload, foreign)
    before = file_digests(out)
    assert main(["train", str(config), "--output-dir", str(out), "--resume", str(foreign)]) == 2
    assert "holds a 'equiformer_v2' model and the config trains 'egnn'" in capsys.readouterr().err
    assert main(["train", str(config), "--output-dir", str(out), "--resume", str(other / "last.pt")]) == 2
    assert "config differs from the saved run at model.options" in capsys.readouterr().err
    assert file_digests(out) == before


@pytest.mark.slow
def test_gradient_accumulation_equals_the_larger_batch(workdir, tmp_path):
    config = write_config(workdir, "accumulate", epochs=1)
    train(load_config(config, [f"output_dir={tmp_path / 'big'}", "batch_size=8"]), verbose=False)
    train(load_config(config, [f"output_dir={tmp_path / 'acc'}", "batch_size=4", "accumulate_batches=2"]),
          verbose=False)
    assert_same_weights(weights(tmp_path / "big"), weights(tmp_path / "acc"), atol=2e-6)
    assert load_checkpoint(tmp_path / "acc" / "last.pt")["global_step"] == 12


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.slow
def test_mixed_precision_trains(workdir, tmp_path, amp):
    config = load_config(write_config(workdir, f"amp_{amp}", epochs=2), [f"output_dir={tmp_path}", f"amp={amp}",
                                                                         "checkpoint_every=7"])
    result = train(config, verbose=False)
    full = train(load_config(write_config(workdir, "amp_none", epochs=2), [f"output_dir={tmp_path / 'fp32'}"]),
                 verbose=False)
    assert result.best_valid_loss == pytest.approx(full.best_valid_loss, rel=0.05)
    scaler = load_checkpoint(step_checkpoints(tmp_path)[-1])["scaler"]
    assert (scaler is not None) == (amp == "fp16")
    resumed = Trainer(config, resume=True, verbose=False)  # the scaler state comes back
    if amp == "fp16":
        assert resumed.scaler.get_scale() == scaler["scale"]


@pytest.mark.parametrize("name", ["egnn", "gfno2d_p4"])
def test_activation_checkpointing_keeps_gradients(name):
    torch.manual_seed(0)
    model = build_model(name, **({"hidden": 16, "layers": 2} if name == "egnn" else {"width": 4, "modes": 4}))
    twin = build_model(name, **({"hidden": 16, "layers": 2} if name == "egnn" else {"width": 4, "modes": 4}))
    twin.load_state_dict(model.state_dict())
    assert enable_activation_checkpointing(twin) == len(twin.layers if name == "egnn" else twin.blocks)
    if name == "egnn":
        frames = ase.io.read(ETHANOL, index=":2")
        batch = AtomicGraph.collate([AtomicGraph.from_ase(a, GraphSpec.of(model)) for a in frames])

        def loss(m):  # energy and forces: the backward pass differentiates twice
            out = model_outputs(m, batch, True, False)
            return out["energy"].sum() + out["forces"].square().sum()
    else:
        x = torch.randn(2, 16, 16, 10)

        def loss(m):
            return m(x).square().mean()

    grads = []
    for m in (model, twin):
        m.train()
        loss(m).backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
    for key, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][key], atol=1e-6, rtol=1e-5), key


@pytest.mark.slow
def test_compile_trains_field_models_as_eager(tmp_path):
    from sciml.data.pde import generate_navier_stokes, write_fno_mat

    data = generate_navier_stokes(16, resolution=16, solver_resolution=32, viscosity=1e-3, forcing="symmetric",
                                  t_final=2.0, record_every=0.25, dt=2.5e-3, scheme="heun", seed=0, dtype=torch.float32)
    path = tmp_path / "ns16.mat"
    write_fno_mat(path, data["vorticity"].numpy(), data["initial"].numpy(), data["t"].numpy())
    losses = []
    for compiled in (False, True):
        config = load_config(None, [
            f"data.path={path}", "data.format=fno_mat", "model.name=fno2d", "model.options={t_in: 4, width: 8, modes: 4, blocks: 2}",
            "fields.t_in=4", "fields.steps=3", "split.valid=4", "split.test=0", "batch_size=4", "epochs=2",
            f"output_dir={tmp_path / str(compiled)}", f"compile={str(compiled).lower()}"])
        losses.append(train(config, verbose=False).best_valid_loss)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


@pytest.mark.slow
def test_bench_ddp_prints_the_ratio_of_two_ranks_to_one(capsys):
    assert main(["bench", "ddp", "--structures", "48", "--epochs", "1", "--batch", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    one, two = (line.split() for line in lines[-2:])
    assert (one[0], two[0]) == ("1", "2") and float(one[4]) == 1.0 and float(two[4]) > 0


def test_inconsistent_launch_environments_are_clear_errors(monkeypatch):
    from sciml.distributed import DistributedError, setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(DistributedError, match="RANK=5 does not fit WORLD_SIZE=2"):
        setup("cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(DistributedError, match="MASTER_ADDR and MASTER_PORT unset"):
        setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DistributedError, match="WORLD_SIZE='two' is not an integer"):
        setup("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not setup("cpu").enabled


@pytest.mark.slow
def test_two_ranks_train_and_evaluate_a_field_model_as_one_rank(tmp_path):
    """FNO through the trainer: 2 ranks x batch 2 equal 1 rank x batch 4, including the test-set
    errors (rotated set included) that the ranks compute on halves of the trajectories."""
    from sciml.data.pde import generate_navier_stokes, write_fno_mat

    data = generate_navier_stokes(21, resolution=16, solver_resolution=32, viscosity=1e-3, forcing="symmetric",
                                  t_final=2.0, record_every=0.25, dt=2.5e-3, scheme="heun", seed=1, dtype=torch.float32)
    path = tmp_path / "ns16.mat"
    write_fno_mat(path, data["vorticity"].numpy(), data["initial"].numpy(), data["t"].numpy())
    config = tmp_path / "fno.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "fno2d", "options": {"t_in": 4, "width": 8, "modes": 4, "blocks": 2}},
        "data": {"path": str(path), "format": "fno_mat"}, "fields": {"t_in": 4, "steps": 3, "transforms": ["identity", "rot90"]},
        "split": {"valid": 4, "test": 5}, "epochs": 2, "batch_size": 2, "seed": 1}))
    result = run("train", str(config), "--output-dir", str(tmp_path / "two"), ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    train(load_config(config, [f"output_dir={tmp_path / 'one'}", "batch_size=4"]), verbose=False)
    assert_same_weights(weights(tmp_path / "two"), weights(tmp_path / "one"), atol=2e-6)
    two, one = (json.loads((tmp_path / name / "test_metrics.json").read_text())["model"] for name in ("two", "one"))
    assert two.keys() == one.keys() and two["num_samples"] == 5
    for key in ("rel_l2", "rel_l2_rot90"):
        assert two[key] == pytest.approx(one[key], rel=1e-5)

"""``sciml slurm``: the generated sbatch script, run by bash against fake Slurm commands."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sciml.cli.main import main
from sciml.hpc import SlurmJob, render_sbatch

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

REPO = Path(__file__).resolve().parents[2]

# Fake Slurm commands: each logs its arguments under $SHIM_LOG.
SHIMS = {
    "srun": r"""#!/bin/bash
printf '%s\0' "$@" > "$SHIM_LOG/srun.argv"
if [ -n "$FAKE_SRUN_SLEEP" ]; then
    trap 'echo TERM > "$SHIM_LOG/srun.term"; [ -n "$FAKE_SRUN_HANGS" ] || { kill "$sleeper"; exit 143; }' TERM
    sleep "$FAKE_SRUN_SLEEP" & sleeper=$!
    touch "$SHIM_LOG/srun.ready"
    while kill -0 "$sleeper" 2>/dev/null; do wait "$sleeper"; done
fi
""",
    "scontrol": r"""#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then printf 'node-a\nnode-b\n'; exit 0; fi
echo "$*" >> "$SHIM_LOG/scontrol.log"
""",
    "squeue": r"""#!/bin/bash
echo "${FAKE_JOB_STATE:-RUNNING}"
""",
    "sbatch": r"""#!/bin/bash
printf '%s\0' "$@" > "$SHIM_LOG/sbatch.argv"
echo "4242;cluster"
""",
}


@pytest.fixture
def slurm_env(tmp_path, monkeypatch):
    """PATH with the fake Slurm commands first, the job's Slurm variables, and the shim log folder."""
    bin_dir, log_dir = tmp_path / "fake bin", tmp_path / "log"
    bin_dir.mkdir()
    log_dir.mkdir()
    for name, text in SHIMS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SHIM_LOG": str(log_dir),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2"}
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("SHIM_LOG", str(log_dir))
    return env, log_dir


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "my configs" / "egnn small.yaml"
    path.parent.mkdir()
    path.write_text("model: {name: egnn}\ndata: {path: data.extxyz}\ndevice: auto\noutput_dir: runs/x\n")
    return path


def _slurm(config, run_dir, *extra):
    return main(["slurm", str(config), "--nodes", "2", "--gpus-per-node", "4", "--time", "01:00:00",
                 "--partition", "gpu", "--output-dir", str(run_dir), *extra])


def _argv(path: Path):
    return path.read_text().split("\0")[:-1]


def test_script_runs_torchrun_with_the_rendezvous(tmp_path, config, slurm_env, capsys):
    env, log = slurm_env
    run_dir = tmp_path / "my run"
    assert _slurm(config, run_dir, "--cpus-per-gpu", "8", "--max-restarts", "3", "--port", "29511",
                  "--set", "optimizer.lr=5e-4", "epochs=3", "--env-setup", "export FROM_SETUP=1") == 0
    script = run_dir / "sciml_train.sbatch"
    assert f"wrote {script}" in capsys.readouterr().out
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=32", "#SBATCH --time=01:00:00", "#SBATCH --partition=gpu",
                 "#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --signal=B:USR1@180",
                 f'#SBATCH --output="{run_dir}/slurm-%j.out"', "export OMP_NUM_THREADS=8",
                 "export NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1", "export FROM_SETUP=1"):
        assert line in text.splitlines()
    for part in ("--rdzv-backend=c10d", '--rdzv-endpoint="$HEAD:$PORT"', '--nnodes="$SLURM_NNODES"',
                 "--nproc-per-node=4", "--max-restarts=3", "--resume auto", "PORT=29511"):
        assert part in text

    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert _argv(log / "srun.argv") == [
        "--kill-on-bad-exit=1", "torchrun", "--nnodes=2", "--nproc-per-node=4", "--rdzv-id=4242",
        "--rdzv-backend=c10d", "--rdzv-endpoint=node-a:29511", "--max-restarts=3", "--no-python",
        "sciml", "train", str(config), "--resume", "auto",
        "--set", f"output_dir={run_dir}", "--set", "optimizer.lr=5e-4", "--set", "epochs=3",
    ]
    assert not (log / "scontrol.log").exists()  # a finished run is not requeued

    # torchrun itself accepts the arguments
    torch_run = pytest.importorskip("torch.distributed.run")
    parsed = torch_run.get_args_parser().parse_args(_argv(log / "srun.argv")[2:])
    assert (parsed.nnodes, parsed.nproc_per_node, parsed.rdzv_endpoint, parsed.no_python) == ("2", "4", "node-a:29511", True)
    assert parsed.training_script == "sciml" and parsed.training_script_args[:2] == ["train", str(config)]


def _run_until_signalled(script: Path, env: dict, log: Path, signum: int, **extra_env):
    """Run ``script`` until the fake srun is up, send it ``signum``, wait for it to end; (output, requeues)."""
    with open(log / "output", "w") as output:
        process = subprocess.Popen(["bash", str(script)], env={**env, "FAKE_SRUN_SLEEP": "30", **extra_env},
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (log / "srun.ready").exists():
            assert time.monotonic() < deadline and process.poll() is None, "fake srun did not start"
            time.sleep(0.02)
        process.send_signal(signum)
        process.wait(timeout=10)
    finally:
        try:  # the script and whatever it left running (a fake srun that ignores SIGTERM)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    output = (log / "output").read_text()
    requeues = (log / "scontrol.log").read_text().splitlines() if (log / "scontrol.log").exists() else []
    return output, requeues


@pytest.mark.slow
def test_usr1_stops_training_then_requeues(tmp_path, config, slurm_env):
    env, log = slurm_env
    script = render_to(tmp_path, config)
    output, requeues = _run_until_signalled(script, env, log, signal.SIGUSR1)
    assert (log / "srun.term").exists(), output
    assert requeues == ["requeue 4242"], output


@pytest.mark.parametrize("state, requeued", [("RUNNING", True), ("CANCELLED", False)])
@pytest.mark.slow
def test_term_requeues_unless_cancelled(tmp_path, config, slurm_env, state, requeued):
    env, log = slurm_env
    script = render_to(tmp_path, config)
    output, requeues = _run_until_signalled(script, env, log, signal.SIGTERM, FAKE_JOB_STATE=state)
    assert (log / "srun.term").exists(), output
    assert requeues == (["requeue 4242"] if requeued else []), output


@pytest.mark.slow
def test_usr1_requeues_when_training_does_not_stop(tmp_path, config, slurm_env):
    env, log = slurm_env
    script = render_to(tmp_path, config, signal_lead_s=61)  # waits signal_lead_s - 60 = 1 s for the checkpoint
    output, requeues = _run_until_signalled(script, env, log, signal.SIGUSR1, FAKE_SRUN_HANGS="1")
    assert "training did not stop within 1 s" in output
    assert requeues == ["requeue 4242"], output


def render_to(tmp_path, config, **options) -> Path:
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(SlurmJob(str(config), str(tmp_path / "run"), nodes=2, gpus_per_node=2,
                                             time="10:00", partition="gpu", **options)))
    return script


def test_cpu_nodes(tmp_path, config, slurm_env):
    env, log = slurm_env
    run_dir = tmp_path / "cpu run"
    assert main(["slurm", str(config), "--nodes", "3", "--gpus-per-node", "0", "--cpu-ranks-per-node", "8",
                 "--cpus-per-gpu", "2", "--time", "1-00:00:00", "--partition", "cpu", "--account", "proj 1",
                 "--output-dir", str(run_dir)]) == 0
    text = (run_dir / "sciml_train.sbatch").read_text()
    assert "--gpus" not in text and "--nproc-per-node=8" in text and "#SBATCH --cpus-per-task=16" in text
    assert '#SBATCH --account="proj 1"' in text and "export OMP_NUM_THREADS=2" in text
    assert subprocess.run(["bash", str(run_dir / "sciml_train.sbatch")], env=env).returncode == 0
    assert "--nproc-per-node=8" in _argv(log / "srun.argv")


def test_submit_prints_the_job_id(tmp_path, config, slurm_env, capsys):
    env, log = slurm_env
    assert _slurm(config, tmp_path / "run", "--submit", "--script", str(tmp_path / "s.sbatch")) == 0
    assert "submitted batch job 4242" in capsys.readouterr().out
    assert _argv(log / "sbatch.argv") == ["--parsable", str(tmp_path / "s.sbatch")]


def test_submit_without_sbatch_is_a_clear_error(tmp_path, config, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _slurm(config, tmp_path / "run", "--submit") == 2
    assert "sciml slurm: error: sbatch is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "run" / "sciml_train.sbatch").exists()


@pytest.mark.parametrize("args, message", [
    (["--time", "1:2:3:4"], "time limit '1:2:3:4' must look like [D-]HH:MM:SS or MM:SS"),
    (["--time", "00:61:00"], "must look like [D-]HH:MM:SS"),
    (["--time", "02:00"], "must be longer than the 180 s warning"),
    (["--nodes", "0"], "nodes must be at least 1, got 0"),
    (["--gpus-per-node", "-1"], "gpus_per_node must be at least 0"),
    (["--mem", "lots"], "memory 'lots' must be a number"),
    (["--set", "optimizr.lr=1"], "unknown config key 'optimizr'; did you mean 'optimizer'?"),
    (["--set", "output_dir=elsewhere"], "set the run folder with --output-dir"),
    (["--set", "device=cpu"], "trains on device cpu but the job asks for GPUs"),
])
def test_bad_values_give_one_line_errors(tmp_path, config, capsys, args, message):
    assert _slurm(config, tmp_path / "run", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sciml slurm: error: ") and message in err and err.count("\n") == 1


def test_missing_config_and_existing_script(tmp_path, config, capsys):
    assert _slurm(tmp_path / "missing.yaml", tmp_path / "run") == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert _slurm(config, tmp_path / "run") == 0
    assert _slurm(config, tmp_path / "run") == 2
    assert "sciml_train.sbatch already exists; pass --force" in capsys.readouterr().err
    assert _slurm(config, tmp_path / "run", "--force") == 0


def test_example_script_is_what_the_tool_writes():
    example = REPO / "workflows" / "slurm" / "train_multinode.sbatch"
    job = SlurmJob("workflows/oc20/s2ef_2M.yaml", "runs/oc20_s2ef_2M", nodes=2, gpus_per_node=4, time="48:00:00",
                   partition="gpu", cpus_per_gpu=8, max_restarts=3,
                   env_setup="module load cuda; source .venv/bin/activate")
    assert example.read_text() == render_sbatch(job), "regenerate it with the command in workflows/slurm/README.md"

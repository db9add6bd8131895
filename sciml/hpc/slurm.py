"""Slurm batch scripts that run ``sciml train`` under torchrun, one torchrun per node.

The script asks for ``nodes`` nodes with one task each; ``srun`` starts torchrun on every node,
and the torchruns meet at a c10d rendezvous on the job's first node, each starting
``gpus_per_node`` training processes (or ``cpu_ranks_per_node`` on CPU nodes). Training runs with
``--resume auto``, so every start of the job continues from the run folder's newest checkpoint.

Pre-emption and time limits: ``--signal=B:USR1@180`` has Slurm warn the batch shell 180 s early.
The script then sends SIGTERM to the ``srun`` step (srun forwards it to torchrun, torchrun to the
workers, which write a checkpoint at their next step and exit), waits for the step to end (at
most ``signal_lead_s - 60`` s) and requeues the job (``scontrol requeue``); with
``--open-mode=append`` the restarted job appends to the same log. A SIGTERM (Slurm ending the job
now) requeues at once and stops the step, unless the job was cancelled: ``scancel`` ends it for good.
Checkpoint first, then requeue, because ``scontrol requeue`` kills a running job after Slurm's
``KillWait`` (often 30 s), which may be too short for a checkpoint.

Relative paths (config, run folder) are relative to the directory the script is submitted from.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

_TIME_FORMATS = (
    re.compile(r"(?P<d>\d+)-(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2})"),
    re.compile(r"(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2})"),
    re.compile(r"(?P<m>\d+):(?P<s>\d{2})"),
)
_MEMORY = re.compile(r"\d+[KMGT]?", re.IGNORECASE)
# Characters that need no quoting on an #SBATCH line.
_PLAIN = re.compile(r"[\w@%+=:,./-]+")


def time_limit_seconds(text: str) -> int:
    """Seconds in a Slurm time limit written ``[D-]HH:MM:SS`` or ``MM:SS``."""
    for pattern in _TIME_FORMATS:
        match = pattern.fullmatch(str(text).strip())
        if match:
            parts = {k: int(v) for k, v in match.groupdict().items()}
            if parts["s"] >= 60 or ("h" in parts and parts["m"] >= 60) or ("d" in parts and parts["h"] >= 24):
                break
            return ((parts.get("d", 0) * 24 + parts.get("h", 0)) * 60 + parts["m"]) * 60 + parts["s"]
    raise ValueError(f"time limit {text!r} must look like [D-]HH:MM:SS or MM:SS (e.g. 48:00:00 or 2-00:00:00)")


@dataclass
class SlurmJob:
    """A multi-node ``sciml train`` job; invalid values raise ValueError on construction.

    ``config``: the training YAML; ``run_dir``: the run folder (``output_dir`` of training: its
    checkpoints, and the Slurm log ``slurm-<jobid>.out``); ``overrides``: ``KEY=VALUE`` strings
    passed to ``sciml train --set`` (not ``output_dir``: that is ``run_dir``).
    ``gpus_per_node`` 0 runs on CPU nodes with ``cpu_ranks_per_node`` processes per node (default 1).
    ``cpus_per_gpu``: CPU cores per training process (per GPU, or per rank on CPU nodes), also its
    OMP_NUM_THREADS (1 when not given). ``time``: ``[D-]HH:MM:SS`` or ``MM:SS``. ``mem``: memory per
    node as Slurm writes it (``64G``; ``0`` = all). ``max_restarts``: torchrun's restarts of all
    workers after one fails. ``port``: the rendezvous port on the first node. ``env_setup``: shell
    lines run before training (``module load ...; source venv/bin/activate``), verbatim.
    ``signal_lead_s``: how long before the time limit Slurm sends USR1.
    """

    config: str
    run_dir: str
    nodes: int = 1
    gpus_per_node: int = 1
    time: str = "24:00:00"
    partition: Optional[str] = None
    account: Optional[str] = None
    cpus_per_gpu: Optional[int] = None
    mem: Optional[str] = None
    job_name: Optional[str] = None
    overrides: List[str] = field(default_factory=list)
    max_restarts: int = 0
    port: int = 29500
    cpu_ranks_per_node: Optional[int] = None
    env_setup: Optional[str] = None
    signal_lead_s: int = 180

    def __post_init__(self) -> None:
        self.config, self.run_dir = str(self.config), str(self.run_dir)
        self.overrides = [str(item) for item in self.overrides]
        if self.job_name is None:
            self.job_name = f"sciml-{Path(self.config).stem}"
        for name in ("nodes", "gpus_per_node", "cpus_per_gpu", "max_restarts", "port", "cpu_ranks_per_node",
                     "signal_lead_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        _at_least("nodes", self.nodes, 1)
        _at_least("gpus_per_node", self.gpus_per_node, 0)
        _at_least("cpus_per_gpu", self.cpus_per_gpu, 1)
        _at_least("cpu_ranks_per_node", self.cpu_ranks_per_node, 1)
        _at_least("max_restarts", self.max_restarts, 0)
        _at_least("signal_lead_s", self.signal_lead_s, 60)
        if self.gpus_per_node > 0 and self.cpu_ranks_per_node is not None:
            raise ValueError("cpu_ranks_per_node is for CPU nodes (gpus_per_node 0); with GPUs there is one "
                             "process per GPU")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, got {self.port}")
        if time_limit_seconds(self.time) <= self.signal_lead_s:
            raise ValueError(f"time limit {self.time} must be longer than the {self.signal_lead_s} s warning "
                             f"before it, at which the job checkpoints and requeues itself")
        if self.mem is not None and not _MEMORY.fullmatch(self.mem):
            raise ValueError(f"memory {self.mem!r} must be a number with an optional K, M, G or T suffix "
                             f"(e.g. 64G; 0 = all of a node's memory)")
        for name in ("config", "run_dir", "partition", "account", "job_name"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or "\n" in value or "\r" in value):
                raise ValueError(f"{name} {value!r} must be non-empty and on one line")
        for item in self.overrides:
            key, sep, _ = item.partition("=")
            if not sep or not key.strip() or "\n" in item:
                raise ValueError(f"override {item!r} must look like KEY=VALUE, e.g. optimizer.lr=1e-3")
            if key.strip() == "output_dir":
                raise ValueError("set the run folder with run_dir (--output-dir), not an output_dir override")

    @property
    def ranks_per_node(self) -> int:
        """Training processes torchrun starts on each node."""
        return self.gpus_per_node if self.gpus_per_node > 0 else (self.cpu_ranks_per_node or 1)

    @property
    def requeue_wait_s(self) -> int:
        """After USR1, how long the step may take to checkpoint and stop before the job requeues."""
        return self.signal_lead_s - 60

    def train_argv(self) -> List[str]:
        """``sciml train ...`` as each worker runs it."""
        argv = ["sciml", "train", self.config, "--resume", "auto"]
        for item in [f"output_dir={self.run_dir}", *self.overrides]:
            argv += ["--set", item]
        return argv


def _at_least(name: str, value: Optional[int], minimum: int) -> None:
    if value is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _sbatch_value(value: str) -> str:
    """``value`` as one argument on an ``#SBATCH`` line (sbatch reads double quotes and backslashes)."""
    if _PLAIN.fullmatch(value):
        return value
    return '"' + re.sub(r'(["\\#])', r"\\\1", value) + '"'


def render_sbatch(job: SlurmJob) -> str:
    """The text of an sbatch script that runs ``job`` (see the module docstring for what it does)."""
    cpus_per_task = None if job.cpus_per_gpu is None else job.cpus_per_gpu * job.ranks_per_node
    # Slurm expands %j in the log name; a literal % in the run folder is written %%.
    log = str(Path(job.run_dir)).replace("%", "%%") + "/slurm-%j.out"
    options = [("job-name", job.job_name), ("nodes", job.nodes), ("ntasks-per-node", 1)]
    if job.gpus_per_node > 0:
        options.append(("gpus-per-node", job.gpus_per_node))
    options += [("cpus-per-task", cpus_per_task), ("mem", job.mem), ("time", job.time.strip()),
                ("partition", job.partition), ("account", job.account), ("requeue", None),
                ("open-mode", "append"), ("output", log), ("signal", f"B:USR1@{job.signal_lead_s}")]
    lines = ["#!/bin/bash"]
    for name, value in options:
        if name == "requeue":
            lines.append("#SBATCH --requeue")
        elif value is not None:
            lines.append(f"#SBATCH --{name}={_sbatch_value(str(value))}")

    units = f"{job.gpus_per_node} GPU(s)" if job.gpus_per_node > 0 else f"{job.ranks_per_node} CPU rank(s)"
    wait = job.requeue_wait_s
    lines += [
        "",
        f"# sciml train under torchrun on {job.nodes} node(s) x {units}; written by `sciml slurm`.",
        "# Submit it from the directory it was written in: relative paths are relative to that.",
        f"# {job.signal_lead_s} s before the time limit or on pre-emption (USR1), training writes a checkpoint,",
        "# the job requeues itself and `--resume auto` continues from the newest checkpoint.",
        "# `scancel` ends the job for good; `scancel --batch --signal=USR1 JOBID` checkpoints and requeues now.",
        "",
        f"export OMP_NUM_THREADS={job.cpus_per_gpu or 1}",
    ]
    if cpus_per_task is not None:
        lines.append(f"export SRUN_CPUS_PER_TASK={cpus_per_task}  # srun no longer inherits --cpus-per-task (Slurm 22.05)")
    lines += ["export NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1"]
    if job.env_setup and job.env_setup.strip():
        lines += ["", "# environment setup (--env-setup)", job.env_setup.strip()]

    argv = job.train_argv()
    train = " ".join(shlex.quote(word) for word in argv[:5])
    sets = [f"--set {shlex.quote(value)}" for value in argv[6::2]]  # argv[5:] alternates --set, KEY=VALUE
    srun = [
        "srun --kill-on-bad-exit=1 torchrun",
        f'--nnodes="$SLURM_NNODES" --nproc-per-node={job.ranks_per_node}',
        '--rdzv-id="$SLURM_JOB_ID" --rdzv-backend=c10d --rdzv-endpoint="$HEAD:$PORT"',
        f"--max-restarts={job.max_restarts}",
        f"--no-python {train}",
        *sets,
    ]
    lines += [
        "",
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"PORT={job.port}",
        'if [ -z "$HEAD" ]; then',
        '    echo "sciml: no node list (SLURM_JOB_NODELIST=${SLURM_JOB_NODELIST-unset}): submit this script with sbatch" >&2',
        "    exit 1",
        "fi",
        'echo "sciml: job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}, $SLURM_NNODES node(s), rendezvous $HEAD:$PORT"',
        "",
        "SRUN_PID=",
        "REQUEUED=0",
        "REQUEUE_AFTER_STOP=0",
        "DEADLINE=2147483647",
        "requeue() {",
        '    [ "$REQUEUED" = 1 ] && return',
        "    REQUEUED=1",
        '    echo "sciml: requeueing job $SLURM_JOB_ID"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "}",
        "stop_training() {  # on SIGTERM the workers write a checkpoint at their next step and exit",
        f"    DEADLINE=$((SECONDS + {wait}))",
        '    [ -n "$SRUN_PID" ] && kill -TERM "$SRUN_PID" 2>/dev/null',
        "}",
        f"on_usr1() {{  # Slurm's warning: time limit in {job.signal_lead_s} s, or pre-emption",
        '    echo "sciml: USR1: stopping training at a checkpoint, then requeueing"',
        "    REQUEUE_AFTER_STOP=1",
        "    stop_training",
        "}",
        "on_term() {  # the job ends now: time limit, pre-emption, or scancel (which must not requeue)",
        '    case "$(squeue --noheader --jobs="$SLURM_JOB_ID" --format=%T 2>/dev/null)" in',
        '        CANCELLED*) echo "sciml: TERM: job cancelled, not requeueing" ;;',
        '        *) echo "sciml: TERM: requeueing, stopping training at a checkpoint"; requeue ;;',
        "    esac",
        "    stop_training",
        "}",
        "trap on_usr1 USR1",
        "trap on_term TERM",
        "",
        " \\\n    ".join(srun) + " &",
        "SRUN_PID=$!",
        'wait "$SRUN_PID"',
        "STATUS=$?",
        "# A trapped signal interrupts `wait`: give the workers time to write their checkpoint.",
        'while kill -0 "$SRUN_PID" 2>/dev/null; do',
        '    if [ "$SECONDS" -ge "$DEADLINE" ]; then',
        f'        echo "sciml: training did not stop within {wait} s" >&2',
        "        break",
        "    fi",
        "    sleep 1",
        "done",
        'kill -0 "$SRUN_PID" 2>/dev/null || { wait "$SRUN_PID"; STATUS=$?; }',
        '[ "$REQUEUE_AFTER_STOP" = 1 ] && requeue',
        'exit "$STATUS"',
        "",
    ]
    return "\n".join(lines)


def write_sbatch(job: SlurmJob, path: "str | Path | None" = None) -> Path:
    """Write ``render_sbatch(job)`` to ``path`` (default ``RUN_DIR/sciml_train.sbatch``), overwriting it.

    Also creates the run folder: Slurm does not create the folder of its log file.
    """
    path = Path(path) if path is not None else Path(job.run_dir) / "sciml_train.sbatch"
    Path(job.run_dir).mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_sbatch(job))
    path.chmod(0o755)
    return path


def sbatch_executable() -> str:
    """The path of ``sbatch``; FileNotFoundError when it is not on PATH."""
    found = shutil.which("sbatch")
    if found is None:
        raise FileNotFoundError("sbatch is not on PATH (is this a Slurm login node?); "
                                "write the script without --submit and submit it with sbatch where Slurm is")
    return found


def submit_sbatch(script: "str | Path") -> str:
    """Submit ``script`` with ``sbatch --parsable`` from the current directory; returns the job id."""
    result = subprocess.run([sbatch_executable(), "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit status {result.returncode}"]
        raise ValueError(f"sbatch {script} failed: {lines[-1]}")
    return result.stdout.strip().splitlines()[-1].split(";")[0]

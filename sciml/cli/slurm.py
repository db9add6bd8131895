"""``sciml slurm``: write (and submit) an sbatch script for multi-node training (see :mod:`sciml.hpc.slurm`)."""

from __future__ import annotations

import shlex
from pathlib import Path

from sciml.cli.common import add_command, refuse_overwrite

EXAMPLES = """  sciml slurm workflows/oc20/s2ef_2M.yaml --nodes 2 --gpus-per-node 4 --cpus-per-gpu 8 --time 48:00:00 \\
      --partition gpu --account proj42 --env-setup 'module load cuda; source .venv/bin/activate' --submit
  sciml slurm config.yaml --nodes 1 --gpus-per-node 1 --time 04:00:00 --partition debug --set optimizer.lr=5e-4
  sciml slurm config.yaml --nodes 4 --gpus-per-node 0 --cpu-ranks-per-node 8 --cpus-per-gpu 4 \\
      --time 1-00:00:00 --partition cpu                           # CPU nodes: 4 x 8 processes
  sciml slurm config.yaml --nodes 8 --gpus-per-node 4 --time 24:00:00 --partition gpu --max-restarts 3 \\
      --output-dir runs/big --script big.sbatch --force           # see workflows/slurm/README.md
"""


def register(sub) -> None:
    slurm = add_command(sub, "slurm", "write (and submit) a Slurm batch script that trains under torchrun, "
                        "checkpointing and requeueing itself before the time limit", EXAMPLES)
    slurm.add_argument("config", help="training YAML (as for sciml train)")
    slurm.add_argument("--nodes", type=int, required=True, help="number of nodes")
    slurm.add_argument("--gpus-per-node", type=int, required=True,
                       help="GPUs per node, one training process each; 0 for CPU nodes")
    slurm.add_argument("--cpu-ranks-per-node", type=int,
                       help="training processes per CPU node (with --gpus-per-node 0; default 1)")
    slurm.add_argument("--time", required=True, help="time limit per start of the job, [D-]HH:MM:SS or MM:SS")
    slurm.add_argument("--partition", required=True)
    slurm.add_argument("--account")
    slurm.add_argument("--cpus-per-gpu", type=int,
                       help="CPU cores per training process, also its OMP_NUM_THREADS (default: Slurm's, 1 thread)")
    slurm.add_argument("--mem", help="memory per node, e.g. 256G (0 = all of it)")
    slurm.add_argument("--job-name", help="default sciml-<config name>")
    slurm.add_argument("--output-dir", help="run folder: checkpoints and Slurm logs (default: the config's output_dir)")
    slurm.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="override a config key for training, dotted (e.g. optimizer.lr=1e-3); repeatable")
    slurm.add_argument("--max-restarts", type=int, default=0,
                       help="torchrun restarts of all workers after one fails (default 0)")
    slurm.add_argument("--port", type=int, default=29500, help="rendezvous port on the first node (default 29500)")
    slurm.add_argument("--env-setup", help="shell line(s) run before training, e.g. "
                                           "'module load cuda; source .venv/bin/activate'")
    slurm.add_argument("--script", help="where to write the script (default OUTPUT_DIR/sciml_train.sbatch)")
    slurm.add_argument("--force", action="store_true", help="overwrite an existing script")
    slurm.add_argument("--submit", action="store_true", help="submit the script with sbatch and print the job id")
    slurm.set_defaults(run=run_slurm)


def run_slurm(args) -> int:
    from sciml.hpc.slurm import SlurmJob, sbatch_executable, submit_sbatch, write_sbatch
    from sciml.train import load_config

    if any(item.partition("=")[0].strip() == "output_dir" for item in args.set):
        raise ValueError("set the run folder with --output-dir, not --set output_dir=...")
    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir is not None else [])
    config = load_config(args.config, overrides)
    run_dir = str(config.output_dir)
    if args.output_dir is not None and run_dir != args.output_dir:
        raise ValueError(f"--output-dir {args.output_dir!r} reads back as {run_dir!r} in a config; choose another name")
    if args.gpus_per_node > 0 and config.device == "cpu":
        raise ValueError(f"{args.config} trains on device cpu but the job asks for GPUs; add --set device=auto")
    if args.gpus_per_node == 0 and config.device.startswith("cuda"):
        raise ValueError(f"{args.config} trains on device {config.device} but --gpus-per-node is 0; "
                         f"add --set device=cpu")
    job = SlurmJob(
        config=args.config, run_dir=run_dir, nodes=args.nodes, gpus_per_node=args.gpus_per_node, time=args.time,
        partition=args.partition, account=args.account, cpus_per_gpu=args.cpus_per_gpu, mem=args.mem,
        job_name=args.job_name, overrides=args.set, max_restarts=args.max_restarts, port=args.port,
        cpu_ranks_per_node=args.cpu_ranks_per_node, env_setup=args.env_setup,
    )
    script = refuse_overwrite(args.script if args.script else Path(run_dir) / "sciml_train.sbatch", args.force)
    if args.submit:
        sbatch_executable()  # fail before writing anything
    write_sbatch(job, script)
    print(f"wrote {script}")
    if not args.submit:
        print(f"submit it with: sbatch {shlex.quote(str(script))}")
        return 0
    job_id = submit_sbatch(script)
    print(f"submitted batch job {job_id}; log: {Path(run_dir) / f'slurm-{job_id}.out'}")
    return 0

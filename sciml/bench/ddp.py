"""Data-parallel training throughput: 1 rank against N ranks on the same model, data and global batch.

Each run is a real ``sciml train`` launched by torchrun (``python -m torch.distributed.run
--standalone``) in a temporary folder, one thread per rank: EGNN (64 features, 4 layers) on the
shipped ethanol MD frames with energy and force labels, a global batch of ``batch`` structures
(``batch / ranks`` per rank), float32 on the CPU (gloo). Throughput is the training structures
(and atoms) per second of the last epoch, as the run logs it (``samples_per_s``), so start-up,
graph building and validation are excluded; the ratio is N ranks over 1 rank.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import yaml

ETHANOL = Path(__file__).resolve().parents[2] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"


def bench_ddp(ranks: Sequence[int] = (1, 2), structures: int = 480, batch: int = 64, epochs: int = 3,
              hidden: int = 64, layers: int = 4) -> List[Dict]:
    """One row per rank count: ``ranks``, ``samples_per_s``, ``atoms_per_s`` (last epoch) and
    ``wall_s`` (the whole command). ``batch`` is the global batch and must divide by every rank count.

    Raises:
        ValueError: a rank count that does not divide ``batch``; a run that fails (its stderr tail).
    """
    import ase.io

    for count in ranks:
        if count < 1 or batch % count:
            raise ValueError(f"the global batch {batch} must divide by every rank count, got {count}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sciml-bench-ddp-") as folder:
        data = Path(folder) / "ethanol.extxyz"
        ase.io.write(data, ase.io.read(ETHANOL, index=f":{structures}"))
        for count in ranks:
            config = Path(folder) / f"ranks{count}.yaml"
            out = Path(folder) / f"run{count}"
            config.write_text(yaml.safe_dump({
                "model": {"name": "egnn", "options": {"hidden": hidden, "layers": layers}},
                "data": {"path": str(data)}, "split": {"valid": 16, "test": 0}, "epochs": epochs,
                "batch_size": batch // count, "output_dir": str(out), "device": "cpu"}))
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={count}",
                       "-m", "sciml.cli.main", "train", str(config)]
            started = time.perf_counter()
            result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if result.returncode != 0:
                raise ValueError(f"the {count}-rank run failed:\n{result.stderr[-2000:]}")
            with open(out / "metrics.csv", newline="") as handle:
                last = list(csv.DictReader(handle))[-1]
            rows.append(dict(ranks=count, batch_per_rank=batch // count, samples_per_s=float(last["samples_per_s"]),
                             atoms_per_s=float(last["atoms_per_s"]), wall_s=wall))
    return rows


def format_ddp_table(rows: List[Dict], batch: int) -> str:
    """Throughput per rank count and the ratio to the first row (1 rank)."""
    base = rows[0]["samples_per_s"]
    lines = [f"data-parallel training throughput, EGNN on ethanol, global batch {batch}, 1 thread per rank, gloo",
             "  ratio = throughput / first row's; ideal = ranks / first row's ranks",
             f"{'ranks':>5} {'batch/rank':>10} {'structures/s':>13} {'atoms/s':>10} {'ratio':>6} {'wall s':>7}"]
    for row in rows:
        lines.append(f"{row['ranks']:>5} {row['batch_per_rank']:>10} {row['samples_per_s']:>13.1f} "
                     f"{row['atoms_per_s']:>10.0f} {row['samples_per_s'] / base:>6.2f} {row['wall_s']:>7.1f}")
    return "\n".join(lines)

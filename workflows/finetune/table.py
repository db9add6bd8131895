"""Print the workflow's table: test-set errors of the fine-tuned and from-scratch runs (their
``test_metrics.json``, the same 100 EAM frames) as a Markdown table. Usage: ``python table.py RUNS``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (("energy_mae_meV_per_atom", "energy MAE (meV/atom)"), ("forces_mae_meV_per_A", "force MAE (meV/Å)"),
           ("stress_mae_meV_per_A3", "stress MAE (meV/Å³)"))


def main(runs: Path) -> None:
    print("| run | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for name in ("pretrain", "finetuned", "scratch"):
        metrics = json.loads((runs / name / "test_metrics.json").read_text())["model"]
        where = "EMT test set" if name == "pretrain" else "EAM test set"
        print(f"| {name} ({where}) | " + " | ".join(f"{metrics[key]:.1f}" for key, _ in COLUMNS) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""Parity plots and learning curves as PNG (matplotlib, headless)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from sciml.io.files import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parity_plot(panels: Dict[str, "tuple[np.ndarray, np.ndarray]"], output: "str | Path", units: Dict[str, str]) -> Path:
    """One parity panel per quantity: ``panels[name] = (reference, predicted)`` flat arrays."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (name, (reference, predicted)) in zip(axes[0], panels.items()):
        reference, predicted = np.ravel(reference), np.ravel(predicted)
        mae = float(np.mean(np.abs(predicted - reference)))
        ax.scatter(reference, predicted, s=4, alpha=0.5)
        low, high = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
        ax.plot([low, high], [low, high], "k--", lw=0.8)
        unit = units.get(name, "")
        ax.set_xlabel(f"reference {name} ({unit})")
        ax.set_ylabel(f"predicted {name} ({unit})")
        ax.set_title(f"{name}: MAE {mae:.4g} {unit}")
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(output)


def learning_curves(metrics_csv: "str | Path", output: "str | Path", columns: Sequence[str] = ()) -> Path:
    """Plot per-epoch columns of a trainer's metrics.csv (all numeric loss/MAE columns by default)."""
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{metrics_csv} has no epochs yet")
    columns = list(columns) or [c for c in rows[0] if c != "epoch" and ("loss" in c or "mae" in c)]
    epochs = [int(r["epoch"]) for r in rows]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.8 * len(columns), 3.4), squeeze=False)
    for ax, column in zip(axes[0], columns):
        values = [float(r[column]) if r.get(column) not in (None, "") else np.nan for r in rows]
        ax.plot(epochs, values, marker=".")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(column)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(output)

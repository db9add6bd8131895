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


def md_plot(log: "str | Path", output: "str | Path") -> Path:
    """Energies (eV), temperature (K) and, for periodic runs, pressure (GPa) and volume (Å³) against
    time (ps) from the log of ``sciml md`` (see :mod:`sciml.md_log`), as one PNG of stacked panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sciml.md_log import read_log

    columns = read_log(log)
    if len(columns["time_fs"]) == 0:
        raise ValueError(f"{log} has no rows yet")
    time_ps = columns["time_fs"] / 1000.0
    periodic = "pressure_GPa" in columns
    panels = 4 if periodic else 2
    fig, axes = plt.subplots(panels, 1, figsize=(7.0, 2.1 * panels + 0.6), sharex=True, squeeze=False)
    axes = axes[:, 0]
    energy = axes[0]
    etot = columns["etot_eV"]
    energy.plot(time_ps, columns["epot_eV"] - etot[0], lw=0.8, label="potential")
    energy.plot(time_ps, etot - etot[0], lw=1.2, color="k", label="total")
    energy.set_ylabel("E - Etot(0) (eV)")
    energy.legend(fontsize=7, loc="best")
    drift = (etot[-1] - etot[0]) * 1e3
    energy.set_title(f"{Path(log).name}: total energy change {drift:+.3f} meV over {time_ps[-1] - time_ps[0]:.3g} ps",
                     fontsize=9)
    temperature = columns["temperature_K"]
    axes[1].plot(time_ps, temperature, lw=0.8, color="tab:red")
    axes[1].axhline(float(np.mean(temperature)), color="k", lw=0.6, ls="--")
    axes[1].set_ylabel("T (K)")
    axes[1].set_title(f"mean {np.mean(temperature):.1f} K", fontsize=8, loc="right")
    if periodic:
        pressure = columns["pressure_GPa"]
        axes[2].plot(time_ps, pressure, lw=0.8, color="tab:green")
        axes[2].axhline(float(np.nanmean(pressure)), color="k", lw=0.6, ls="--")
        axes[2].set_ylabel("P (GPa)")
        axes[2].set_title(f"mean {np.nanmean(pressure):.3f} GPa", fontsize=8, loc="right")
        axes[3].plot(time_ps, columns["volume_A3"], lw=0.8, color="tab:purple")
        axes[3].set_ylabel("V (Å³)")
    axes[-1].set_xlabel("time (ps)")
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(output)

"""Parity plots and learning curves as PNG (matplotlib, headless).

Both are grids of panels of about 4 x 3 inches (at most three columns) written at 120 dpi:

- :func:`parity_plot` draws one panel per quantity (predicted against reference, the y = x
  line, equal axes) with its MAE and RMSE printed in the panel; :func:`parity_panels` gathers
  the quantities a model predicts and a set of labelled graphs holds (energy per atom, force
  components, stress components in GPa, every property the model predicts).
- :func:`learning_curves` draws a trainer's ``metrics.csv``: the train and valid loss on one log
  axis, one panel per validation metric with its unit, the learning rate, and the best epoch
  (lowest ``valid_loss``) as a vertical line.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from sciml.io.files import atomic_path

DPI = 120
PANEL_INCHES = (4.0, 3.0)  # width, height of one learning-curve panel
PARITY_INCHES = (4.0, 3.8)  # width, height of one parity panel (square axes plus labels)
MAX_COLUMNS = 3
_SHORT = 16  # longer quantity names are left out of axis labels (the panel title has them)
GPA_PER_EV_PER_A3 = 160.21766208  # 1 eV/Å^3 in GPa
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))  # xx, yy, zz, yz, xz, xy

# Readable names of the crystal-benchmark targets (others: underscores become spaces).
PROPERTY_NAMES = {
    "formation_energy_peratom": "formation energy per atom", "formation_energy_per_atom": "formation energy per atom",
    "e_form": "formation energy per atom", "optb88vdw_bandgap": "OptB88vdW band gap", "mbj_bandgap": "MBJ band gap",
    "hse_gap": "HSE band gap", "ehull": "energy above hull", "e_above_hull": "energy above hull",
    "optb88vdw_total_energy": "total energy per atom", "bulk_modulus_kv": "bulk modulus (Voigt)",
    "shear_modulus_gv": "shear modulus (Voigt)", "exfoliation_en": "exfoliation energy", "relaxed_energy": "relaxed energy",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def property_name(key: str) -> str:
    """A label key as words: ``formation_energy_peratom`` -> ``formation energy per atom``."""
    if key in PROPERTY_NAMES:
        return PROPERTY_NAMES[key]
    return re.sub(r"_?per_?atom$", " per atom", key).replace("_", " ").strip()


def _property_unit(key: str, units: Optional[Mapping[str, str]]) -> str:
    from sciml.models.domain import PROPERTY_UNITS

    return (units or {}).get(key, PROPERTY_UNITS.get(key, ""))


def _with_unit(text: str, unit: str) -> str:
    return f"{text} ({unit})" if unit else text


def _grid(plt, count: int, inches: Tuple[float, float]):
    """A figure with ``count`` axes in rows of at most :data:`MAX_COLUMNS`; unused cells hidden."""
    columns = min(count, MAX_COLUMNS)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(inches[0] * columns, inches[1] * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[count:]:
        ax.remove()
    return fig, flat[:count]


def _save(fig, output: "str | Path") -> Path:
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(output)


def format_number(value: float) -> str:
    """Three significant digits (no trailing zeros), without exponent between 1e-3 and 1e4."""
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.3g}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


# ---------------------------------------------------------------------------------------------- parity
@dataclass
class ParityPanel:
    """One parity panel: flat ``reference`` and ``predicted`` values in ``unit``.

    ``title`` heads the panel, ``quantity`` names the axes ("reference force (eV/Å)"; left out
    when longer than 16 characters). The MAE and RMSE are printed in ``error_unit`` (``unit``
    when None), the errors multiplied by ``error_scale`` (e.g. 1000 for eV -> meV); ``items``
    names what one point is (structures, components).
    """

    title: str
    reference: np.ndarray
    predicted: np.ndarray
    unit: str = ""
    quantity: str = ""
    error_unit: Optional[str] = None
    error_scale: float = 1.0
    items: str = "points"


def parity_statistics(reference: np.ndarray, predicted: np.ndarray, scale: float = 1.0) -> Dict[str, float]:
    """``mae``, ``rmse`` and ``max`` absolute error of ``predicted - reference`` (times ``scale``)
    and ``count`` of values."""
    error = (np.ravel(predicted).astype(np.float64) - np.ravel(reference).astype(np.float64)) * scale
    if error.size == 0:
        raise ValueError("a parity panel needs at least one value")
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error**2))),
            "max": float(np.max(np.abs(error))), "count": float(error.size)}


def parity_text(stats: Mapping[str, float], unit: str, items: str = "points") -> str:
    """The text a parity panel prints: MAE, RMSE (in ``unit``) and the number of points."""
    suffix = f" {unit}" if unit else ""
    return (f"MAE  {format_number(stats['mae'])}{suffix}\nRMSE {format_number(stats['rmse'])}{suffix}\n"
            f"N = {int(stats['count'])} {items}")


def _as_panel(name: str, value: Union[ParityPanel, Tuple[np.ndarray, np.ndarray]], units: Mapping[str, str]) -> ParityPanel:
    if isinstance(value, ParityPanel):
        return value
    reference, predicted = value
    return ParityPanel(name[:1].upper() + name[1:], np.ravel(reference), np.ravel(predicted), units.get(name, ""), name)


def parity_figure(panels: Mapping[str, Union[ParityPanel, Tuple[np.ndarray, np.ndarray]]],
                  units: Optional[Mapping[str, str]] = None) -> Tuple[Any, Dict[str, Dict[str, Any]]]:
    """The parity grid as a matplotlib Figure and, per panel name, the numbers it prints:
    ``mae``, ``rmse``, ``max``, ``count``, ``unit`` (of the errors) and ``text`` (the panel's
    annotation). ``panels`` maps a name to a :class:`ParityPanel` or a (reference, predicted)
    pair whose unit is ``units[name]``."""
    if not panels:
        raise ValueError("nothing to plot: no quantity is both predicted and labelled")
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    resolved = {name: _as_panel(name, value, units or {}) for name, value in panels.items()}
    fig, axes = _grid(plt, len(resolved), PARITY_INCHES)
    summary: Dict[str, Dict[str, Any]] = {}
    for ax, (name, panel) in zip(axes, resolved.items()):
        reference, predicted = np.ravel(panel.reference).astype(float), np.ravel(panel.predicted).astype(float)
        if reference.shape != predicted.shape:
            raise ValueError(f"parity panel {name!r}: {reference.size} reference values but {predicted.size} predicted")
        error_unit = panel.unit if panel.error_unit is None else panel.error_unit
        stats: Dict[str, Any] = parity_statistics(reference, predicted, panel.error_scale)
        stats["unit"] = error_unit
        stats["text"] = parity_text(stats, error_unit, panel.items)
        summary[name] = stats
        count = reference.size
        if count > 20000:
            density = ax.hexbin(reference, predicted, gridsize=60, bins="log", mincnt=1, cmap="viridis", linewidths=0)
            fig.colorbar(density, ax=ax, label="points per bin", shrink=0.8)
        else:
            size = float(np.clip(3000.0 / count, 3.0, 25.0))
            ax.scatter(reference, predicted, s=size, alpha=0.6 if count < 2000 else 0.3, edgecolors="none",
                       color="tab:blue", rasterized=count > 2000)
        low = float(min(reference.min(), predicted.min()))
        high = float(max(reference.max(), predicted.max()))
        pad = 0.05 * (high - low) if high > low else max(abs(high), 1.0) * 0.05
        limits = (low - pad, high + pad)
        ax.plot(limits, limits, color="0.3", ls="--", lw=1.0, label="y = x", zorder=3)
        ax.set_xlim(limits)
        ax.set_ylim(limits)
        ax.set_aspect("equal", adjustable="box")
        ax.ticklabel_format(useOffset=False)
        quantity = panel.quantity or name
        quantity = quantity if len(quantity) <= _SHORT else ""  # a long name stays in the title only
        ax.set_xlabel(_with_unit(f"reference {quantity}".strip(), panel.unit))
        ax.set_ylabel(_with_unit(f"predicted {quantity}".strip(), panel.unit))
        ax.set_title(panel.title)
        # values far from zero for their spread (energies per atom) have long tick labels: fewer ticks
        ticks = 3 if max(abs(limits[0]), abs(limits[1])) > 20 * (limits[1] - limits[0]) else 5
        ax.xaxis.set_major_locator(MaxNLocator(nbins=ticks))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=ticks))
        # the numbers go in the off-diagonal corner with fewer points (a biased model fills one)
        x = (reference - limits[0]) / (limits[1] - limits[0])
        y = (predicted - limits[0]) / (limits[1] - limits[0])
        upper_left = int(np.sum((x < 0.5) & (y > 0.7)))
        lower_right = int(np.sum((x > 0.5) & (y < 0.3)))
        corner = (0.04, 0.96, "top", "left") if upper_left <= lower_right else (0.96, 0.04, "bottom", "right")
        ax.text(corner[0], corner[1], stats["text"], transform=ax.transAxes, va=corner[2], ha=corner[3],
                family="monospace", fontsize=8.5,
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.85})
        ax.legend(loc="best", fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig, summary


def parity_plot(panels: Mapping[str, Union[ParityPanel, Tuple[np.ndarray, np.ndarray]]], output: "str | Path",
                units: Optional[Mapping[str, str]] = None) -> Dict[str, Dict[str, Any]]:
    """Write the parity grid of :func:`parity_figure` to ``output`` (PNG); returns its numbers."""
    plt = _pyplot()
    fig, summary = parity_figure(panels, units)
    try:
        _save(fig, output)
    finally:
        plt.close(fig)
    return summary


def parity_panels(model, graphs: Sequence[Any], batch_size: int = 32, device: "str | None" = None,
                  prediction_keys: Optional[Mapping[str, str]] = None,
                  property_units: Optional[Mapping[str, str]] = None) -> Dict[str, ParityPanel]:
    """The parity panels of ``model`` on labelled :class:`~sciml.graph.AtomicGraph` s: what the
    model predicts and the graphs are labelled with.

    ``energy`` (per atom, eV/atom, errors in meV/atom), ``forces`` (Cartesian components, eV/Å,
    errors in meV/Å), ``stress`` (the six Voigt components of the periodic structures, GPa) and
    one panel per property label the model predicts (under its name or ``prediction_keys[name]``),
    in ``property_units`` (or the known unit of the benchmark target).
    """
    from sciml.inference import predict_batches

    if len(graphs) == 0:
        raise ValueError("no structures to plot")
    first = graphs[0]
    keys = sorted(first.properties) + sorted(first.atom_properties)
    prediction_keys = dict(prediction_keys or {})
    values: Dict[str, Tuple[List[np.ndarray], List[np.ndarray]]] = {}

    def add(name: str, reference, predicted) -> None:
        refs, preds = values.setdefault(name, ([], []))
        refs.append(reference.detach().double().cpu().numpy().ravel())
        preds.append(predicted.detach().double().cpu().numpy().ravel())

    for batch, out in predict_batches(model, graphs, batch_size, device, compute_forces=first.forces is not None,
                                      compute_stress=first.stress is not None):
        if batch.energy is not None and "energy" in out:
            atoms = batch.num_atoms_per_graph.double()
            add("energy", batch.energy.double() / atoms, out["energy"].double() / atoms)
        if batch.forces is not None and "forces" in out:
            add("forces", batch.forces, out["forces"])
        if batch.stress is not None and "stress" in out:
            periodic = batch.pbc.any(dim=1)
            if bool(periodic.any()):
                rows, columns = zip(*VOIGT)
                add("stress", batch.stress[periodic][:, rows, columns] * GPA_PER_EV_PER_A3,
                    out["stress"][periodic][:, rows, columns] * GPA_PER_EV_PER_A3)
        for key in keys:
            predicted = prediction_keys.get(key, key)
            target = batch.properties.get(key, batch.atom_properties.get(key))
            if predicted in out and target is not None:
                add(key, target, out[predicted].reshape(target.shape))
    panels: Dict[str, ParityPanel] = {}
    for name, (refs, preds) in values.items():
        reference, predicted = np.concatenate(refs), np.concatenate(preds)
        if name == "energy":
            panels[name] = ParityPanel("Energy per atom", reference, predicted, "eV/atom", "energy", "meV/atom", 1000.0,
                                       "structures")
        elif name == "forces":
            panels[name] = ParityPanel("Forces (Cartesian components)", reference, predicted, "eV/Å", "force", "meV/Å",
                                       1000.0, "components")
        elif name == "stress":
            panels[name] = ParityPanel("Stress (6 Voigt components)", reference, predicted, "GPa", "stress", "GPa",
                                       1.0, "components")
        else:
            words = property_name(name)
            items = "structures" if name in first.properties and first.properties[name].numel() == 1 else "values"
            panels[name] = ParityPanel(words[:1].upper() + words[1:], reference, predicted,
                                       _property_unit(name, property_units), words, None, 1.0, items)
    return panels


# --------------------------------------------------------------------------------------- learning curves
# Metric-name endings of sciml's trainer -> (unit, factor applied to the values for the plot).
_UNIT_SUFFIXES = (
    ("_meV_per_atom", "meV/atom", 1.0), ("_meV_per_A3", "GPa", GPA_PER_EV_PER_A3 / 1000.0),
    ("_meV_per_A", "meV/Å", 1.0), ("_meV", "meV", 1.0),
)
_STATISTICS = {"mae": "MAE", "rmse": "RMSE", "mse": "RMSE"}
_QUANTITY_TITLES = {"energy": "Energy", "forces": "Forces", "stress": "Stress"}
_NOT_METRICS = {"lr", "epoch", "epoch_time_s", "samples_per_s", "atoms_per_s", "peak_memory_mb"}


@dataclass
class MetricDescription:
    """How a metric column is drawn: ``title`` of its panel, ``ylabel`` (with the unit),
    ``factor`` applied to the values and ``root`` (plot the square root, MSE -> RMSE)."""

    title: str
    ylabel: str
    factor: float = 1.0
    root: bool = False


def describe_metric(name: str, units: Optional[Mapping[str, str]] = None) -> MetricDescription:
    """Panel title and y label (with unit) of a metric named as sciml's trainer names them,
    without its ``train_``/``valid_`` prefix: ``energy_mae_meV_per_atom`` -> "energy MAE
    (meV/atom)", ``forces_rmse_meV_per_A`` -> "forces RMSE (meV/Å)", ``stress_mae_meV_per_A3``
    -> "stress MAE (GPa)", ``<property>_mae`` -> "<property> MAE (<unit>)" with the unit of
    ``units[property]`` or of the known benchmark target, ``<property>_mse`` -> its RMSE,
    ``rel_l2[_<set>]`` -> relative L2 error."""
    if name == "rel_l2" or name.startswith("rel_l2_"):
        variant = name[len("rel_l2_"):]
        title = "Relative L2 error" + (f" ({variant.replace('_', ' ')})" if variant else "")
        return MetricDescription(title, "relative L2 error")
    for suffix, unit, factor in _UNIT_SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            quantity, _, statistic = stem.rpartition("_")
            statistic = _STATISTICS.get(statistic, statistic)
            per = " per atom" if suffix == "_meV_per_atom" else (" per structure" if suffix == "_meV" else "")
            title = f"{_QUANTITY_TITLES.get(quantity, quantity.replace('_', ' ').capitalize())} {statistic}{per}"
            return MetricDescription(title, f"{quantity.replace('_', ' ')} {statistic} ({unit})", factor)
    quantity, _, statistic = name.rpartition("_")
    if statistic in _STATISTICS and quantity:
        words = property_name(quantity)
        label = _with_unit(f"{words if len(words) <= _SHORT else ''} {_STATISTICS[statistic]}".strip(),
                           _property_unit(quantity, units))
        return MetricDescription(f"{words[:1].upper() + words[1:]} {_STATISTICS[statistic]}", label,
                                 root=statistic == "mse")
    words = name.replace("_", " ")
    return MetricDescription(words[:1].upper() + words[1:], words)


def read_metrics(metrics_csv: "str | Path") -> Dict[str, np.ndarray]:
    """The numeric columns of a trainer's ``metrics.csv`` as float arrays (NaN for empty cells),
    ``epoch`` included."""
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{metrics_csv} has no epochs yet")
    columns: Dict[str, np.ndarray] = {}
    for name in rows[0]:
        try:
            columns[name] = np.array([float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows])
        except ValueError:
            continue  # a text column
    if "epoch" not in columns:
        raise ValueError(f"{metrics_csv} has no epoch column")
    return columns


def best_epoch(metrics: Mapping[str, np.ndarray], column: str = "valid_loss") -> Optional[int]:
    """The epoch with the lowest ``column`` (the first on ties; None without that column or values)."""
    values = metrics.get(column)
    if values is None or not np.isfinite(values).any():
        return None
    return int(metrics["epoch"][int(np.nanargmin(np.where(np.isfinite(values), values, np.nan)))])


def _metric_names(metrics: Mapping[str, np.ndarray], columns: Sequence[str]) -> List[str]:
    """The metric names (without train_/valid_ prefix) that get a panel, energy/forces/stress first."""
    if columns:
        return [c.removeprefix("valid_").removeprefix("train_") for c in columns if c not in ("loss", "valid_loss", "train_loss")]
    names: List[str] = []
    for column in metrics:
        for prefix in ("valid_", "train_"):
            if column.startswith(prefix):
                name = column[len(prefix):]
                if name != "loss" and name not in names and name not in _NOT_METRICS and not name.startswith("num_"):
                    names.append(name)
    order = {"energy": 0, "forces": 1, "stress": 2}
    return sorted(names, key=lambda n: order.get(n.split("_")[0], 3))


def _log_scale(values: Sequence[np.ndarray]) -> bool:
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    return finite.size > 1 and bool((finite > 0).all()) and finite.max() / finite.min() >= 10.0


def _plain_log_labels(ax, formatter) -> None:
    """Plain tick labels (0.2, 0.5, 1) on a log y axis spanning under 2.5 decades, where
    matplotlib would write 2 x 10^-1 or leave the axis with one label."""
    low, high = ax.get_ylim()
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    if decades >= 2.5:
        return

    def minor(value: float, _position) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
        return format_number(value) if decades < 1 or mantissa in (2, 5) else ""

    ax.yaxis.set_major_formatter(formatter(lambda value, _position: format_number(value)))
    ax.yaxis.set_minor_formatter(formatter(minor))


def curves_figure(metrics: Mapping[str, np.ndarray], units: Optional[Mapping[str, str]] = None,
                  columns: Sequence[str] = (), learning_rate: bool = True, title: str = "") -> Any:
    """The learning-curve grid of :func:`read_metrics` columns as a matplotlib Figure.

    Panel one: ``train_loss`` and ``valid_loss`` on a log axis; then one panel per metric (every
    ``valid_*``/``train_*`` metric, or those named in ``columns``) with its train and valid
    values, titled and labelled with its unit by :func:`describe_metric`; then, with
    ``learning_rate`` and an ``lr`` column, the learning rate. The best epoch (lowest
    ``valid_loss``) is a dotted vertical line in every panel, named in the loss panel's legend.
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    plt = _pyplot()
    epochs = metrics["epoch"]
    names = _metric_names(metrics, columns)
    has_loss = "train_loss" in metrics or "valid_loss" in metrics
    show_lr = learning_rate and "lr" in metrics and np.isfinite(metrics["lr"]).any()
    count = int(has_loss) + len(names) + int(show_lr)
    if count == 0:
        raise ValueError("metrics.csv has no loss, metric or learning-rate column to plot")
    fig, axes = _grid(plt, count, PANEL_INCHES)
    best = best_epoch(metrics)
    marker = "o" if len(epochs) <= 30 else None
    panels = iter(axes)

    def finish(ax, ylabel: str, title_text: str, log: bool, legend: bool) -> None:
        if best is not None:
            label = None
            if ax is axes[0] and has_loss:
                label = f"best epoch {best} (valid loss {format_number(float(metrics['valid_loss'][epochs == best][0]))})"
            ax.axvline(best, color="tab:red", ls=":", lw=1.2, label=label)
        if log:
            ax.set_yscale("log")
            _plain_log_labels(ax, FuncFormatter)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title_text)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both" if log else "major")
        if legend:
            ax.legend(fontsize=8)

    if has_loss:
        ax = next(panels)
        series = []
        for column, label, color in (("train_loss", "train", "tab:blue"), ("valid_loss", "valid", "tab:orange")):
            if column in metrics:
                series.append(metrics[column])
                ax.plot(epochs, metrics[column], marker=marker, ms=3, color=color, label=label)
        finite = np.concatenate(series)[np.isfinite(np.concatenate(series))]
        finish(ax, "loss (dimensionless)", "Loss", finite.size > 0 and bool((finite > 0).all()), True)
    for name in names:
        ax = next(panels)
        description = describe_metric(name, units)
        series = []
        for prefix, label, color in (("train_", "train", "tab:blue"), ("valid_", "valid", "tab:orange")):
            column = prefix + name
            if column in metrics:
                values = metrics[column] * description.factor
                values = np.sqrt(values) if description.root else values
                series.append(values)
                ax.plot(epochs, values, marker=marker, ms=3, color=color, label=label)
        finish(ax, description.ylabel, description.title, _log_scale(series), len(series) > 1)
    if show_lr:
        ax = next(panels)
        ax.plot(epochs, metrics["lr"], color="tab:green", marker=marker, ms=3)
        finish(ax, "learning rate", "Learning rate", _log_scale([metrics["lr"]]), False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def learning_curves(metrics_csv: "str | Path", output: "str | Path", columns: Sequence[str] = (),
                    units: Optional[Mapping[str, str]] = None, learning_rate: bool = True, title: str = "") -> Path:
    """Write the learning curves of a trainer's ``metrics.csv`` (see :func:`curves_figure`) to
    ``output`` (PNG); ``units`` names the unit of each property label."""
    plt = _pyplot()
    fig = curves_figure(read_metrics(metrics_csv), units, columns, learning_rate, title)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
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

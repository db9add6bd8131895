"""What a training run reports: its header, progress lines, epoch table and ``train.log``.

- :class:`RunLog` prints lines (rank 0 only, when verbose) and appends every one of them to
  ``train.log`` in the run folder, also when the terminal output is off; a resumed run appends
  to the same file.
- :func:`header_lines` describes the run before its first epoch: the data (structures per
  split, atoms, elements and the training labels' statistics), the model, the optimisation and
  the runtime (device, threads, dtype).
- :class:`EpochTable` prints one fixed-width row per epoch under a two-line header naming each
  column and its unit (the units of the metric names, see :mod:`sciml.train.evaluation`).
- :class:`ProgressReporter` prints, every ``progress_every_s`` seconds, the batches done, the
  throughput and the time left in the epoch and in the run: on stderr when it is not a terminal
  (batch jobs, where the tqdm bar is unreadable) and always into ``train.log``.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

LOG_NAME = "train.log"
EV_PER_A3_IN_GPA = 160.21766208  # 1 eV/Å^3 in GPa
BEST_MARKER = "*"

# Column label and unit of the metrics the trainer and the problems report.
_COLUMNS: Dict[str, Tuple[str, str]] = {
    "train_loss": ("train", "loss"),
    "valid_loss": ("valid", "loss"),
    "valid_energy_mae_meV_per_atom": ("E MAE", "meV/atom"),
    "valid_energy_rmse_meV_per_atom": ("E RMSE", "meV/atom"),
    "valid_energy_mae_meV": ("E MAE", "meV"),
    "valid_forces_mae_meV_per_A": ("F MAE", "meV/Å"),
    "valid_forces_rmse_meV_per_A": ("F RMSE", "meV/Å"),
    "valid_stress_mae_meV_per_A3": ("S MAE", "meV/Å^3"),
    "valid_rel_l2": ("rel L2", ""),
    "lr": ("lr", ""),
    "epoch_time_s": ("time", "s"),
    "samples_per_s": ("train", "samples/s"),
}
# Row keys that stay in metrics.csv only.
_NOT_SHOWN = ("epoch", "atoms_per_s", "peak_memory_mb")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` beyond a day); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


class RunLog:
    """Lines to the terminal and to ``train.log``.

    ``echo``: print them (stdout, or stderr for warnings and progress); ``write``: keep them for
    ``train.log`` (only rank 0 writes files, and prints warnings even when not echoing). Lines logged before :meth:`attach` names the file
    are kept and written first, so messages from before the run folder was checked are not lost.
    The file is opened, appended to and closed for every line: nothing is lost when the process
    dies and ``tail -f`` shows each line at once.
    """

    def __init__(self, echo: bool, write: bool):
        self.echo, self.write = echo, write
        self.path: Optional[Path] = None
        self._pending: List[str] = []

    def attach(self, folder: "str | Path") -> Path:
        """Append from now on to ``folder/train.log`` (created when missing), starting with a line
        that says when this process started, then the lines logged so far."""
        self.path = Path(folder) / LOG_NAME
        if self.write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            pending, self._pending = self._pending, []
            self._append([f"# sciml train, pid {os.getpid()}, started {_now()}", *pending])
        return self.path

    def info(self, text: str, stderr: bool = False, echo: bool = True) -> None:
        """Print ``text`` (one or more lines) on stdout (stderr) when ``echo``, and log it."""
        if self.echo and echo:
            _print(text, sys.stderr if stderr else sys.stdout)
        self.log_only(text)

    def warn(self, message: str) -> None:
        """``warning: message`` on stderr (by rank 0, also when not echoing), and in the log."""
        if self.write and not self.echo:
            _print(f"warning: {message}", sys.stderr)
        self.info(f"warning: {message}", stderr=True)

    def log_only(self, text: str) -> None:
        """Into ``train.log`` only (e.g. the final summary, which the command prints itself)."""
        if not self.write:
            return
        lines = text.splitlines() or [""]
        if self.path is None:
            self._pending.extend(lines)
        else:
            self._append(lines)

    def _append(self, lines: Sequence[str]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))


def _print(text: str, stream: Any) -> None:
    """Print above any tqdm bar and flush: stdout redirected to a file (batch jobs) is block-buffered."""
    tqdm.write(text, file=stream)
    stream.flush()


# ----------------------------------------------------------------------------- header
def _split_counts(splits: Mapping[str, Sequence[Any]]) -> str:
    return ", ".join(f"{name} {len(items)}" for name, items in splits.items())


def _mean_std(values: torch.Tensor) -> Tuple[float, float]:
    """Mean and (population) standard deviation."""
    values = values.double()
    return float(values.mean()), float(values.std(unbiased=False)) if values.numel() > 1 else 0.0


def label_statistics(graphs: Sequence[Any], property_units: Mapping[str, str] = {}) -> List[str]:
    """The label statistics the header shows, one string per label, of atomic graphs: energy per
    atom mean and standard deviation (eV/atom), force and stress RMS over components (eV/Å,
    GPa), and each per-structure or per-atom property's mean and standard deviation."""
    parts = []
    first = graphs[0]
    if first.energy is not None:
        atoms = torch.tensor([float(g.num_nodes) for g in graphs], dtype=torch.float64)
        per_atom = torch.cat([g.energy.reshape(-1) for g in graphs]).double().cpu() / atoms
        mean, std = _mean_std(per_atom)
        parts.append(f"energy/atom mean {mean:.6g} std {std:.4g} eV/atom")
    if first.forces is not None:
        forces = torch.cat([g.forces.reshape(-1) for g in graphs]).double()
        parts.append(f"forces RMS {float(forces.square().mean().sqrt()):.4g} eV/Å")
    if first.stress is not None:
        stress = torch.cat([g.stress.reshape(-1) for g in graphs]).double()
        parts.append(f"stress RMS {float(stress.square().mean().sqrt()) * EV_PER_A3_IN_GPA:.4g} GPa")
    for key in list(first.properties) + list(first.atom_properties):
        values = [g.properties.get(key, g.atom_properties.get(key)) for g in graphs]
        if any(v is None or not v.is_floating_point() for v in values):
            continue
        mean, std = _mean_std(torch.cat([v.reshape(-1) for v in values]))
        unit = property_units.get(key, "")
        parts.append(f"{key} mean {mean:.4g} std {std:.4g}{' ' + unit if unit else ''}")
    return parts


def data_lines(path: str, splits: Mapping[str, Sequence[Any]], property_units: Mapping[str, str] = {}) -> List[str]:
    """The header's data lines: structures per split, atoms, elements and the training labels'
    statistics of atomic graphs (:func:`label_statistics`); samples and their shape otherwise."""
    from ase.data import chemical_symbols

    everything = [item for items in splits.values() for item in items]
    name = Path(str(path)).name
    if not everything or not hasattr(everything[0], "atomic_numbers"):
        shape = tuple(everything[0].shape) if everything and hasattr(everything[0], "shape") else ()
        return [f"data     {name}: {len(everything)} samples ({_split_counts(splits)}), each of shape {shape}"]
    sizes = [int(g.num_nodes) for g in everything]
    numbers = sorted({int(z) for g in everything for z in torch.unique(g.atomic_numbers).tolist()})
    atoms = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)} (mean {sum(sizes) / len(sizes):.1f})"
    lines = [f"data     {name}: {len(everything)} structures ({_split_counts(splits)}), {atoms} atoms each, "
             f"elements {' '.join(chemical_symbols[z] for z in numbers)}"]
    train = list(splits.get("train", everything))
    stats = label_statistics(train, property_units) if train else []
    if stats:
        lines.append("labels   (train) " + "; ".join(stats))
    return lines


def model_line(name: str, model: torch.nn.Module, options: Mapping[str, Any]) -> str:
    """``model    <name>: <N> parameters (<options>)``."""
    count = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    extra = f" ({trainable:,} trainable)" if trainable != count else ""
    settings = ", ".join(f"{k}={v}" for k, v in options.items())
    return f"model    {name}: {count:,} parameters{extra}{f' ({settings})' if settings else ''}"


def header_lines(title: str, data: Sequence[str], model: str, training: str, runtime: str) -> List[str]:
    """The lines printed before the first epoch, framed by rules."""
    rule = "-" * max(len(line) for line in (title, *data, model, training, runtime))
    return [rule, title, *data, model, training, f"runtime  {runtime}", rule]


# ----------------------------------------------------------------------------- epoch table
def _square(unit: str) -> str:
    if not unit:
        return ""
    return f"{unit}^2" if "/" not in unit and " " not in unit else f"({unit})^2"


def column(name: str, units: Mapping[str, str]) -> Tuple[str, str]:
    """Label and unit of a metrics-row column: the known metric names, ``valid_<key>_mae``
    (``<key>``'s unit from ``units``), ``valid_<key>_mse`` (its square), else the bare name."""
    if name in _COLUMNS:
        return _COLUMNS[name]
    bare = name[len("valid_"):] if name.startswith("valid_") else name
    for suffix, label in (("_mae", "MAE"), ("_mse", "MSE"), ("_rmse", "RMSE")):
        if bare.endswith(suffix):
            key = bare[: -len(suffix)]
            unit = units.get(key, "")
            return f"{key} {label}", _square(unit) if suffix == "_mse" else unit
    return bare, ""


def _number(value: float, width: int) -> str:
    """``value`` right-aligned in ``width`` characters, 4 significant digits."""
    text = f"{value:.4g}"
    if len(text) > width:
        text = f"{value:.{max(width - 6, 0)}e}"
    return text.rjust(width)


class EpochTable:
    """Fixed-width epoch rows under a header that names each column and its unit.

    The columns are those of the first row (the trainer's metrics row: losses, validation
    metrics, learning rate, time, throughput) less :data:`_NOT_SHOWN`; ``units`` gives the units
    of property metrics (``valid_<property>_mae``). Rows end in :data:`BEST_MARKER` when the
    validation loss improved.
    """

    def __init__(self, epochs: int, units: Mapping[str, str] = {}):
        self.epochs, self.units = epochs, dict(units)
        self.keys: List[str] = []
        self.widths: List[int] = []
        self.epoch_width = max(len("epoch"), 2 * len(str(epochs)) + 1)

    def header(self, row: Mapping[str, float]) -> List[str]:
        """The column header of rows like ``row`` (fixes the columns) and the marker's meaning."""
        self.keys = [k for k in row if k not in _NOT_SHOWN]
        labels = [column(k, self.units) for k in self.keys]
        self.widths = [max(len(label), len(unit), 9 if k != "lr" else 8, 5) for k, (label, unit) in zip(self.keys, labels)]
        names = "epoch".rjust(self.epoch_width) + "".join(f" {label:>{w}}" for (label, _), w in zip(labels, self.widths))
        units = " " * self.epoch_width + "".join(f" {unit:>{w}}" for (_, unit), w in zip(labels, self.widths))
        return [f"epochs: validation metrics of the epoch's model; {BEST_MARKER} = lowest validation loss so far "
                "(saved as best.pt); loss: the weighted loss of the config (no unit)", names, units.rstrip()]

    def row(self, row: Mapping[str, float], best: bool) -> str:
        """One fixed-width line for ``row``."""
        epoch = f"{int(row['epoch'])}/{self.epochs}".rjust(self.epoch_width)
        cells = "".join(" " + (_number(float(row[k]), w) if k in row else "-".rjust(w)) for k, w in zip(self.keys, self.widths))
        return epoch + cells + (f" {BEST_MARKER}" if best else "")


# ----------------------------------------------------------------------------- progress
class ProgressReporter:
    """Progress lines every ``interval_s`` seconds within epochs.

    A line: epoch, batches done of the epoch's, percent, structures (samples) and atoms per
    second since the epoch started, the last batch's loss, and the estimated time left in the
    epoch's training and in the run (the epochs left timed as the last whole epoch took, with
    its validation; before one has finished, as its training alone would take). Throughput is
    this process's times the number of ranks. Lines go to ``log`` (``train.log``) and, when
    ``to_terminal`` (stderr is not a terminal), to stderr.
    """

    def __init__(self, log: RunLog, epochs: int, interval_s: float, ranks: int = 1, atoms_counted: bool = True,
                 clock: Callable[[], float] = time.perf_counter):
        self.log, self.epochs, self.interval_s = log, epochs, interval_s
        self.ranks, self.atoms_counted, self.clock = ranks, atoms_counted, clock
        self.last_epoch_s: Optional[float] = None
        self.to_terminal = False
        self._epoch, self._total, self._first = 0, 0, 0
        self._started = self._last = 0.0
        self._structures = self._atoms = 0

    def start_epoch(self, epoch: int, total_batches: int, first_batch: int = 0) -> None:
        """An epoch of ``total_batches`` starts at ``first_batch`` (after a mid-epoch resume)."""
        self._epoch, self._total, self._first = epoch, total_batches, first_batch
        self._started = self._last = self.clock()
        self._structures = self._atoms = 0
        self.to_terminal = not _is_terminal(sys.stderr)

    def batch_done(self, batches_done: int, structures: int, atoms: int, loss: float) -> None:
        """Count a trained batch; print a line when ``interval_s`` has passed since the last one."""
        self._structures += structures
        self._atoms += atoms
        now = self.clock()
        if now - self._last < self.interval_s or batches_done >= self._total:
            return
        self._last = now
        self.log.info(self.line(batches_done, now - self._started, loss), stderr=True, echo=self.to_terminal)

    def end_epoch(self, seconds: float) -> None:
        """The whole epoch (training and validation) took ``seconds``."""
        self.last_epoch_s = seconds

    def line(self, batches_done: int, elapsed_s: float, loss: float) -> str:
        """The progress line after ``batches_done`` batches and ``elapsed_s`` seconds of the epoch."""
        trained = batches_done - self._first
        per_batch = elapsed_s / trained if trained > 0 else math.nan
        epoch_left = (self._total - batches_done) * per_batch
        next_epochs = self.last_epoch_s if self.last_epoch_s is not None else self._total * per_batch
        run_left = epoch_left + (self.epochs - self._epoch) * next_epochs
        kind = "structures" if self.atoms_counted else "samples"
        rate = f"{self.ranks * self._structures / elapsed_s:.1f} {kind}/s" if elapsed_s > 0 else f"? {kind}/s"
        if self.atoms_counted and elapsed_s > 0:
            rate += f", {self.ranks * self._atoms / elapsed_s:.0f} atoms/s"
        percent = 100.0 * batches_done / max(self._total, 1)
        return (f"epoch {self._epoch}/{self.epochs}  batch {batches_done}/{self._total} ({percent:.0f}%)  {rate}  "
                f"loss {loss:.4g}  ETA epoch {format_duration(epoch_left)} (+ validation), "
                f"run {format_duration(run_left)}  [{_now()}]")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

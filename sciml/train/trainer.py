"""Training any sciml graph model on labelled structures: :func:`train` and :class:`Trainer`.

The model maps a batch (:class:`AtomicGraph`) to a dict of predictions: an energy model (one
:class:`EnergyHead`, trained on energy/forces/stress and any properties) or any other model,
trained on the properties of ``loss.properties`` (e.g. predicted positions, see
``data.prediction_keys``).

A run writes into ``config.output_dir``:

- ``config.yaml``: the resolved configuration; ``splits.json``: the train/valid/test indices;
- ``metrics.csv``: one row per epoch (and TensorBoard events under ``tensorboard/`` when
  TensorBoard is installed);
- ``last.pt`` after every epoch and ``best.pt`` at the lowest validation loss (atomic writes);
  both hold everything needed to resume, and their ``state_dict`` holds the weights to use for
  inference (the moving average when ``ema_decay`` is set);
- ``test_metrics.json``: the best model and trivial baselines on the test set.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import yaml
from tqdm.auto import tqdm

from sciml.data.oc20.sources import detect_format, load_graphs
from sciml.data.readers import load_graph_dataset, read_structures
from sciml.data.sampling import AtomBalancedBatchSampler
from sciml.graph import AtomicGraph, GraphSpec
from sciml.io.checkpoint import load_checkpoint, save_checkpoint
from sciml.io.files import atomic_path
from sciml.models import build_model
from sciml.models.heads import EnergyHead, PropertyHead, fit_element_energies
from sciml.data.crystals import alignn_split, matbench_folds, read_crystal_dataset
from sciml.train.config import DataConfig, TrainConfig
from sciml.inference import model_outputs
from sciml.train.evaluation import evaluate, format_metrics, mean_baseline_metrics
from sciml.train.optim import ExponentialMovingAverage, LearningRateSchedule, build_optimizer

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Keys that may change when a run is resumed; any other difference is refused.
_RESUMABLE_CHANGES = ("epochs", "early_stopping_patience", "device", "valid_batch_size", "output_dir")
_RUN_FILES = ("last.pt", "best.pt", "metrics.csv")
# OC20 formats read the OC20 way without data.format: ASE databases keep the plain ase reader.
_OC20_AUTO_FORMATS = ("s2ef-extxyz", "legacy-lmdb", "sciml-cache")
_CRYSTAL_FORMATS = ("jarvis", "matbench", "mp", "cif")


@dataclass
class TrainResult:
    """Outcome of a run: where it is, when it was best, and its validation and test errors."""

    output_dir: Path
    last_epoch: int
    best_epoch: int
    best_valid_loss: float
    stopped_early: bool
    valid_metrics: Dict[str, float] = field(default_factory=dict)
    test_metrics: Dict[str, float] = field(default_factory=dict)
    baseline_metrics: Dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for the terminal: the best epoch, its validation and test errors."""
        stop = " (early stop)" if self.stopped_early else ""
        parts = [f"run {self.output_dir}: {self.last_epoch} epochs{stop}; best epoch {self.best_epoch} "
                 f"(valid loss {self.best_valid_loss:.4g}); checkpoint {self.output_dir / 'best.pt'}",
                 format_metrics(self.valid_metrics, "validation (best epoch):")]
        if self.test_metrics:
            parts.append(format_metrics({**self.test_metrics, **self.baseline_metrics}, "test set (best model, baselines):"))
        return "\n".join(parts)


def train(config: TrainConfig, resume: bool = False, verbose: bool = True) -> TrainResult:
    """Train as configured; ``resume`` continues the run in ``config.output_dir`` from ``last.pt``."""
    return Trainer(config, resume=resume, verbose=verbose).fit()


def fit_statistics(graphs: Sequence[AtomicGraph], property_keys: Sequence[str] = ()) -> Dict[str, Any]:
    """Training-set statistics for the energy head and the loss normalisation.

    Returns ``element_energies`` (119,) eV (least-squares per-element reference energies; None,
    like ``energy_rms_per_atom`` and ``energy_scale``, when the graphs carry no energies),
    ``energy_rms_per_atom`` eV (RMS per-atom residual of that fit), ``forces_rms`` eV/Å and
    ``stress_rms`` eV/Å^3 (RMS of the label components, None without labels), ``property_mean``
    and ``property_std`` (each property's mean and standard deviation) and ``energy_scale`` eV, the energy head's per-atom
    scale: ``forces_rms`` x 1 Å when forces are labelled (as MACE's default), since a model
    whose outputs vary by O(1) per Å then meets forces of the right size, else
    ``energy_rms_per_atom``. A statistic that is zero (a constant label) is replaced by 1.
    """
    def rms(values: torch.Tensor) -> float:
        value = float(values.double().square().mean().sqrt())
        return value if value > 1e-12 else 1.0

    element_energies, residual_rms = None, None
    if graphs[0].energy is not None:
        energies = torch.cat([g.energy for g in graphs]).double().cpu()
        element_energies, residual_rms = fit_element_energies(list(graphs), energies)
        element_energies, residual_rms = element_energies.double().cpu(), residual_rms if residual_rms > 1e-12 else 1.0
    stats: Dict[str, Any] = {
        "element_energies": element_energies,
        "energy_rms_per_atom": residual_rms,
        "forces_rms": rms(torch.cat([g.forces for g in graphs])) if graphs[0].forces is not None else None,
        "stress_rms": rms(torch.cat([g.stress for g in graphs])) if graphs[0].stress is not None else None,
        "property_mean": {},
        "property_std": {},
    }
    stats["energy_scale"] = stats["forces_rms"] or stats["energy_rms_per_atom"]
    for key in property_keys:
        values = torch.cat([g.properties.get(key, g.atom_properties.get(key)) for g in graphs]).double()
        stats["property_mean"][key] = float(values.mean())
        stats["property_std"][key] = rms(values - values.mean())
    return stats


class Trainer:
    """One training run (see the module docstring for what it writes).

    Construction reads the data, builds the model and graphs, makes (or, on resume, reloads) the
    split and restores state from ``last.pt`` when resuming; :meth:`fit` trains.

    Raises:
        ValueError: the output directory already holds a run and ``resume`` is False; resuming
            without ``last.pt``, with a changed config or changed data; bad data or config.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, verbose: bool = True):
        config.validate()
        self.config, self.verbose = config, verbose
        self.output_dir = Path(config.output_dir)
        checkpoint = self._check_output_dir(resume)
        self.device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available()
                                   else "cpu" if config.device == "auto" else config.device)
        self.dtype = _DTYPES[config.dtype]
        torch.manual_seed(config.seed)
        self.model = build_model(config.model.name, **config.model.options)
        self.graphs = self._load_graphs()
        self.splits = self._load_splits() if resume else self._make_splits(len(self.graphs))
        self.train_graphs, self.valid_graphs, self.test_graphs = (
            [self.graphs[i] for i in self.splits[name]] for name in ("train", "valid", "test"))
        self.statistics = fit_statistics(self.train_graphs, config.data.property_keys)
        head = _energy_head(self.model)
        if head is not None:
            if self.statistics["element_energies"] is None:
                raise ValueError(f"model {config.model.name!r} predicts energies but {config.data.path} has no "
                                 f"energy labels under data.energy_key={config.data.energy_key!r}")
            head.set_statistics(self.statistics["element_energies"], self.statistics["energy_scale"])
        self._standardise_property_heads()
        if head is None and not any(weight > 0 for weight in config.loss.properties.values()):
            raise ValueError(f"model {config.model.name!r} has no energy head: set loss.properties, the labels "
                             f"to train it on (its outputs: see data.prediction_keys)")
        self.model.to(device=self.device, dtype=self.dtype)

        first = self.train_graphs[0]
        self.use_forces = first.forces is not None and config.loss.forces > 0
        self.use_stress = first.stress is not None and config.loss.stress > 0 and bool(first.pbc.any())
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.sampler = None
        if config.batch_max_atoms is not None:
            self.sampler = AtomBalancedBatchSampler([g.num_nodes for g in self.train_graphs], config.batch_size,
                                                    config.batch_max_atoms, seed=config.seed)
        steps_per_epoch = len(self.sampler) if self.sampler is not None else math.ceil(len(self.train_graphs) / config.batch_size)
        self.schedule = LearningRateSchedule(self.optimizer, config.scheduler, steps_per_epoch, config.epochs)
        self.ema = ExponentialMovingAverage(self.model, config.ema_decay) if config.ema_decay is not None else None
        self.shuffle_generator = torch.Generator().manual_seed(config.seed)
        self.start_epoch, self.best_epoch, self.best_valid_loss, self.stale_epochs = 1, 0, math.inf, 0
        if checkpoint is not None:
            self._restore(checkpoint)
        self._write_yaml(self.output_dir / "config.yaml", config.to_dict())

    # ------------------------------------------------------------------------- setup
    def _standardise_property_heads(self) -> None:
        """Give each named :class:`PropertyHead` its label's training mean and standard deviation,
        so the model learns the standardised label (ComFormer's label normalisation)."""
        outputs = {self.config.data.prediction_keys.get(k, k): k for k in self.config.data.property_keys}
        for module in self.model.modules():
            if isinstance(module, PropertyHead) and module.name in outputs:
                label = outputs[module.name]
                module.set_statistics(self.statistics["property_mean"][label], self.statistics["property_std"][label])

    def _check_output_dir(self, resume: bool) -> Optional[Dict[str, Any]]:
        """Refuse to overwrite a run; on resume return ``last.pt`` after checking the config."""
        if not resume:
            if any((self.output_dir / name).exists() for name in _RUN_FILES):
                raise ValueError(f"output directory {self.output_dir} already holds a run; use --resume or another directory")
            return None
        last = self.output_dir / "last.pt"
        if not last.is_file():
            raise ValueError(f"cannot resume: {last} does not exist (start a new run without --resume)")
        checkpoint = load_checkpoint(last)
        changed = _differences(checkpoint["train_config"], self.config.to_dict())
        changed = [c for c in changed if c.split(":")[0] not in _RESUMABLE_CHANGES]
        if changed:
            raise ValueError(f"cannot resume {self.output_dir}: the config differs from the saved run at "
                             f"{'; '.join(changed)} (only {', '.join(_RESUMABLE_CHANGES[:-1])} may change)")
        return checkpoint

    def _load_graphs(self) -> List[AtomicGraph]:
        data = self.config.data
        spec = GraphSpec.of(self.model)
        if data.cutoff is not None:
            if spec is not None and spec.knn is None and spec.cutoff is not None and data.cutoff < spec.cutoff:
                raise ValueError(f"data.cutoff {data.cutoff} Å is smaller than the model's cutoff {spec.cutoff} Å")
            spec = replace(spec, cutoff=data.cutoff) if spec is not None else GraphSpec(cutoff=data.cutoff)
        if spec is None:
            raise ValueError(f"model {self.config.model.name!r} has no cutoff; set data.cutoff")
        if data.max_neighbors is not None:
            spec = replace(spec, max_neighbors=data.max_neighbors)
        required = ["energy"] if data.energy_key is not None else []
        if self.config.loss.forces > 0 and data.forces_key is not None:
            required.append("forces")
        return load_training_graphs(data, spec, self.dtype, required)

    def _make_splits(self, total: int) -> Dict[str, List[int]]:
        """Seeded random split, the fixed ``split.ranges`` or a benchmark's split (``split.method``);
        saved to ``splits.json``."""
        split = self.config.split
        if split.method == "alignn":
            train = split.train
            if train is None:
                counts = isinstance(split.valid, int) and isinstance(split.test, int)
                train = total - split.valid - split.test if counts else 1.0 - float(split.valid) - float(split.test)
            return self._save_splits(total, alignn_split(total, train, split.valid, split.test, split.seed))
        if split.method == "matbench":
            train, test = matbench_folds(total)[split.fold]
            train = torch.as_tensor(train)[torch.randperm(len(train), generator=torch.Generator().manual_seed(split.seed))]
            valid = int(round(float(split.valid) * len(train))) if isinstance(split.valid, float) else int(split.valid)
            return self._save_splits(total, {"train": sorted(train[valid:].tolist()), "valid": sorted(train[:valid].tolist()),
                                             "test": [int(i) for i in test]})
        if split.ranges:
            splits = {name: list(range(*split.ranges.get(name, (0, 0)))) for name in ("train", "valid", "test")}
            stop = max(bounds[1] for bounds in split.ranges.values())
            if stop > total:
                raise ValueError(f"split.ranges {split.ranges} reach index {stop - 1}, but {self.config.data.path} "
                                 f"holds {total} structures")
            return self._save_splits(total, splits)

        def size(value: "int | float") -> int:
            return int(value) if isinstance(value, int) else int(round(value * total))

        valid, test = size(split.valid), size(split.test)
        train = total - valid - test if split.train is None else size(split.train)
        if valid < 1 or train < 1 or train + valid + test > total:
            raise ValueError(f"split train={train}, valid={valid}, test={test} does not fit {total} structures "
                             f"(train and valid need at least one each)")
        order = torch.randperm(total, generator=torch.Generator().manual_seed(split.seed)).tolist()
        splits = {"valid": order[:valid], "test": order[valid:valid + test], "train": order[valid + test:valid + test + train]}
        return self._save_splits(total, splits)

    def _save_splits(self, total: int, splits: Dict[str, List[int]]) -> Dict[str, List[int]]:
        split = self.config.split
        with atomic_path(self.output_dir / "splits.json") as tmp:
            tmp.write_text(json.dumps({"data_path": str(self.config.data.path), "num_structures": total,
                                       "seed": split.seed, **splits}))
        return splits

    def _load_splits(self) -> Dict[str, List[int]]:
        path = self.output_dir / "splits.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot resume: {path} is missing or unreadable ({err})") from None
        if saved["num_structures"] != len(self.graphs):
            raise ValueError(f"cannot resume: {self.config.data.path} now holds {len(self.graphs)} structures, "
                             f"the run was split over {saved['num_structures']}")
        return {name: saved[name] for name in ("train", "valid", "test")}

    def _restore(self, checkpoint: Dict[str, Any]) -> None:
        """Continue exactly where ``last.pt`` stopped: weights, optimizer, schedule, EMA, RNGs."""
        self.model.load_state_dict(checkpoint["train_state_dict"] or checkpoint["state_dict"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["state_dict"], checkpoint["ema_num_updates"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["scheduler"])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        self.shuffle_generator.set_state(rng["shuffle"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(rng["cuda"]))
        self.start_epoch = checkpoint["epoch"] + 1
        self.best_epoch, self.best_valid_loss = checkpoint["best_epoch"], checkpoint["best_metric"]
        self.stale_epochs = checkpoint["stale_epochs"]
        self._truncate_metrics(checkpoint["epoch"])

    # ------------------------------------------------------------------------- training
    def loss(self, batch: AtomicGraph, out: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of mean squared errors (or OC20's MAE / L2-MAE, ``loss.function``), each
        made dimensionless by a training-set scale.

        Energy per atom (total energy for OC20) is divided by the energy head's scale, forces and stress by the RMS of
        their labels, each property by its standard deviation (see :func:`fit_statistics`). A term
        is used when its weight is positive, the batch carries its label and the model predicts it
        (properties: the model must predict them, under ``data.prediction_keys`` names).
        """
        weights, stats = self.config.loss, self.statistics
        oc20 = weights.function == "oc20"
        total = torch.zeros((), device=batch.positions.device, dtype=batch.positions.dtype)
        if weights.energy > 0 and batch.energy is not None and "energy" in out:
            error = (out["energy"] - batch.energy) / stats["energy_scale"]
            if oc20:
                total = total + weights.energy * error.abs().mean()
            else:
                total = total + weights.energy * ((error / batch.num_atoms_per_graph.to(error.dtype)) ** 2).mean()
        if weights.forces > 0 and batch.forces is not None and "forces" in out:
            error = (out["forces"] - batch.forces) / stats["forces_rms"]
            if weights.free_atoms_only and "fixed" in batch.atom_properties:
                error = error[~batch.atom_properties["fixed"].bool()]
            if error.shape[0]:  # a batch of fixed atoms only has no force term
                term = error.norm(dim=1).mean() if oc20 else (error**2).mean()
                total = total + weights.forces * term
        if weights.stress > 0 and batch.stress is not None and "stress" in out:
            total = total + weights.stress * (((out["stress"] - batch.stress) / stats["stress_rms"]) ** 2).mean()
        for key, weight in weights.properties.items():
            predicted = self.config.data.prediction_keys.get(key, key)
            if predicted not in out:
                raise ValueError(f"loss.properties has {key!r} but model {self.config.model.name!r} does not predict "
                                 f"{predicted!r} (it predicts {sorted(out)}; map labels with data.prediction_keys)")
            target = batch.properties.get(key, batch.atom_properties.get(key))
            error = out[predicted].reshape(target.shape) - target
            total = total + weight * ((error / stats["property_std"][key]) ** 2).mean()
        return total

    def fit(self) -> TrainResult:
        """Train from ``start_epoch`` to ``config.epochs`` (or an early stop), then test.

        Afterwards the model holds the weights of ``best.pt``.
        """
        config = self.config
        writer = _tensorboard_writer(self.output_dir / "tensorboard")
        stopped_early = False
        epoch = self.start_epoch - 1
        try:
            for epoch in range(self.start_epoch, config.epochs + 1):
                row = self._run_epoch(epoch)
                if writer is not None:
                    for name, value in row.items():
                        if name != "epoch":
                            writer.add_scalar(name, value, epoch)
                if config.early_stopping_patience is not None and self.stale_epochs >= config.early_stopping_patience:
                    stopped_early = True
                    break
        finally:
            if writer is not None:
                writer.close()
        best = load_checkpoint(self.output_dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["state_dict"])
        result = TrainResult(self.output_dir, epoch, self.best_epoch, self.best_valid_loss, stopped_early,
                             valid_metrics=dict(best["valid_metrics"]))
        if self.test_graphs:
            result.test_metrics = evaluate(self.model, self.test_graphs, self._valid_batch_size(), self.device,
                                           prediction_keys=config.data.prediction_keys)
            result.baseline_metrics = mean_baseline_metrics(self.train_graphs, self.test_graphs)
            with atomic_path(self.output_dir / "test_metrics.json") as tmp:
                tmp.write_text(json.dumps({"model": result.test_metrics, "baselines": result.baseline_metrics}, indent=1))
        return result

    def _run_epoch(self, epoch: int) -> Dict[str, float]:
        """Train one epoch, validate, log a metrics row and save checkpoints; returns the row."""
        config = self.config
        started = time.perf_counter()
        self.model.train()
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            batches = list(self.sampler)
        else:
            order = torch.randperm(len(self.train_graphs), generator=self.shuffle_generator).tolist()
            batches = [order[k:k + config.batch_size] for k in range(0, len(order), config.batch_size)]
        progress = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False, unit="batch",
                        disable=not (self.verbose and sys.stderr.isatty()))
        loss_sum, lr, seen = 0.0, self.schedule.base_lrs[0], 0
        for indices in progress:
            batch = AtomicGraph.collate([self.train_graphs[i] for i in indices]).to(self.device)
            lr = self.schedule.apply()
            out = model_outputs(self.model, batch, self.use_forces, self.use_stress)
            loss = self.loss(batch, out)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            loss_sum += float(loss.detach()) * len(indices)
            seen += len(indices)
            progress.set_postfix(loss=f"{float(loss.detach()):.4g}")
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch}; lower optimizer.lr or set grad_clip")

        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            valid = evaluate(self.model, self.valid_graphs, self._valid_batch_size(), self.device, self.loss,
                             config.data.prediction_keys)
        valid_loss = valid.pop("loss")
        if not math.isfinite(valid_loss):
            raise FloatingPointError(f"validation loss became {valid_loss} in epoch {epoch}; lower optimizer.lr or set grad_clip")
        valid.pop("num_structures")
        self.schedule.end_epoch(valid_loss)
        improved = valid_loss < self.best_valid_loss
        if improved:
            self.best_epoch, self.best_valid_loss, self.stale_epochs = epoch, valid_loss, 0
        else:
            self.stale_epochs += 1
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "valid_loss": valid_loss,
               **{f"valid_{k}": v for k, v in valid.items()}, "lr": lr, "epoch_time_s": time.perf_counter() - started}
        self._append_metrics(row)
        payload = self._checkpoint_payload(epoch, valid)
        if improved:
            save_checkpoint(self.output_dir / "best.pt", **payload)
        save_checkpoint(self.output_dir / "last.pt", **payload)
        if self.verbose:
            tqdm.write(f"epoch {epoch}/{config.epochs}  train {row['train_loss']:.4g}  valid {valid_loss:.4g}  "
                       + "  ".join(f"{k[6:]} {v:.4g}" for k, v in row.items() if k.startswith("valid_") and k != "valid_loss")
                       + f"  lr {lr:.3g}  {row['epoch_time_s']:.1f}s" + ("  *" if improved else ""))
        return row

    def _valid_batch_size(self) -> int:
        return self.config.valid_batch_size or self.config.batch_size

    # ------------------------------------------------------------------------- files
    def _checkpoint_payload(self, epoch: int, valid_metrics: Dict[str, float]) -> Dict[str, Any]:
        model = self.model
        weights = self.ema.averaged_state_dict(model) if self.ema is not None else model.state_dict()
        rng = {"torch": torch.get_rng_state(), "shuffle": self.shuffle_generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return dict(
            state_dict=weights,
            model_name=model.model_name,
            config=model.config,
            statistics=self.statistics,
            train_state_dict=model.state_dict() if self.ema is not None else None,
            ema_num_updates=self.ema.num_updates if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            epoch=epoch,
            best_epoch=self.best_epoch,
            best_metric=self.best_valid_loss,
            stale_epochs=self.stale_epochs,
            valid_metrics=valid_metrics,
            rng=rng,
            train_config=self.config.to_dict(),
        )

    def _append_metrics(self, row: Dict[str, float]) -> None:
        path = self.output_dir / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def _truncate_metrics(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (written by a run that died before its checkpoint)."""
        path = self.output_dir / "metrics.csv"
        if not path.exists():
            return
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        kept = [r for r in rows if int(r["epoch"]) <= last_epoch]
        if len(kept) != len(rows):
            with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(kept)

    @staticmethod
    def _write_yaml(path: Path, values: Dict[str, Any]) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(values, sort_keys=False))


def load_training_graphs(data: DataConfig, spec: GraphSpec, dtype: torch.dtype = torch.float32,
                         required: Sequence[str] = ()) -> List[AtomicGraph]:
    """The graphs of ``data`` (one per structure, in file order), built as ``spec`` says.

    OC20 sources, crystal datasets (``data.format`` jarvis / matbench / mp / cif: the one label of
    ``data.property_keys`` is read, entries without it are dropped) and anything ase reads.
    ``required`` names labels (energy, forces) every structure must carry.
    """
    if data.format == "oc20" or (data.format is None and detect_format(data.path) in _OC20_AUTO_FORMATS):
        return _oc20_graphs(data, required, spec, dtype)
    if data.format in _CRYSTAL_FORMATS:
        if len(data.property_keys) != 1:
            raise ValueError(f"data.format {data.format} reads one target: set data.property_keys to [<target>], "
                             f"got {data.property_keys}")
        options = {"targets_path": data.targets_path} if data.targets_path else {}
        frames = read_crystal_dataset(data.path, data.format, data.property_keys[0], **options)
        return load_graph_dataset(frames, spec, None, None, None, None, data.property_keys, dtype=dtype)
    frames = read_structures(data.path, ":", data.energy_key, data.forces_key, data.stress_key, data.property_keys,
                             required)
    return load_graph_dataset(frames, spec, None, data.energy_key, data.forces_key, data.stress_key,
                              data.property_keys, dtype=dtype)


def _oc20_graphs(data, required: Sequence[str], spec: GraphSpec, dtype: torch.dtype) -> List[AtomicGraph]:
    """Graphs of an OC20 source, with the labels the config asks for (see ``DataConfig.format``)."""
    graphs = load_graphs(data.path, spec.cutoff, spec.max_neighbors, dtype)
    first = graphs[0]
    for label in required:
        if getattr(first, label) is None:
            raise ValueError(f"{data.path} has no {label} labels (IS2RE files hold their target as the property "
                             f"relaxed_energy, for models that predict it: data.property_keys, loss.properties)")
    missing = [k for k in data.property_keys if k not in first.properties and k not in first.atom_properties]
    if missing:
        raise ValueError(f"{data.path} has no properties {missing} (it has {sorted(first.properties)} per structure, "
                         f"{sorted(first.atom_properties)} per atom)")
    drop = {name: None for name, key in (("energy", data.energy_key), ("forces", data.forces_key)) if key is None}
    return [replace(g, **drop) for g in graphs] if drop else graphs


def _energy_head(model: torch.nn.Module) -> Optional[EnergyHead]:
    """The model's :class:`EnergyHead`, which receives the training-set statistics (None for a
    model that predicts no energy)."""
    heads = [m for m in model.modules() if isinstance(m, EnergyHead)]
    if len(heads) > 1:
        raise ValueError(f"the trainer needs a model with at most one EnergyHead, {type(model).__name__} has {len(heads)}")
    return heads[0] if heads else None


def _differences(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """``"key: old -> new"`` for every dotted key whose value differs between nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key not in ("options", "properties"):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _tensorboard_writer(folder: Path):
    """A TensorBoard ``SummaryWriter`` when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))

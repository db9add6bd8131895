"""Training any sciml model: :func:`train` and :class:`Trainer`.

The trainer owns the loop, optimizer, schedule, EMA, splits, checkpoints, logs and resuming; what
depends on the data (samples, batches, statistics, loss, metrics) is a problem
(:mod:`sciml.train.problem`). On atomic structures (:mod:`sciml.train.atomistic`) the model maps a
batch (:class:`~sciml.graph.AtomicGraph`) to a dict of predictions: an energy model (one
``EnergyHead``, trained on energy/forces/stress and any properties) or any other model, trained
on the properties of ``loss.properties`` (e.g. predicted positions, see ``data.prediction_keys``).

A run writes into ``config.output_dir``:

- ``config.yaml``: the resolved configuration; ``splits.json``: the train/valid/test indices;
- ``metrics.csv``: one row per epoch (and TensorBoard events under ``tensorboard/`` when
  TensorBoard is installed);
- ``last.pt`` after every epoch and ``best.pt`` at the lowest validation loss (atomic writes);
  both hold everything needed to resume, and their ``state_dict`` holds the weights to use for
  inference (the moving average when ``ema_decay`` is set);
- ``checkpoints/step-<step>.pt`` every ``checkpoint_every`` optimizer steps and at SIGTERM or
  SIGUSR1 (see :mod:`sciml.train.signals`): model, optimizer, schedule, gradient scaler, EMA,
  the position in the epoch and the RNG states, so ``resume="auto"`` continues mid-epoch and
  ends exactly as an uninterrupted run;
- ``test_metrics.json``: the best model and trivial baselines on the test set.

With ``init_from`` the run is a fine-tune: it starts from the weights of that checkpoint, whose
model and options it takes, and records it as its parent (see :mod:`sciml.train.finetune`).

Launched by ``torchrun`` the run is data-parallel (:mod:`sciml.distributed`): every rank takes its
share of each step from one shared plan (:class:`~sciml.data.sampling.AtomBalancedBatchSampler`,
balanced by atoms), gradients are averaged over ranks (:mod:`sciml.train.parallel`), losses and
throughput are summed over ranks, validation and test sets are evaluated in shards whose errors
are combined (so all ranks agree on schedules and early stopping), and only rank 0 writes files. A rank's loss is the mean
over its batch, so ``N`` ranks with ``batch_size`` B take the same steps as one process with
``batch_size`` N x B when structures are equally large.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml
from tqdm.auto import tqdm

from sciml import distributed
from sciml.data.sampling import AtomBalancedBatchSampler
from sciml.data.splits import alignn_split, matbench_split, random_split, range_split
from sciml.devices import resolve_dtype, runtime_line
from sciml.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sciml.io.files import atomic_path
from sciml.models import build_model
from sciml.models.domain import PROPERTY_UNITS
from sciml.threads import adapt_threads
from sciml.train import finetune
from sciml.train.acceleration import enable_activation_checkpointing
from sciml.train.checkpoints import STEP_FOLDER, newest_checkpoint, prune_step_checkpoints, step_checkpoint_path
from sciml.train.config import TrainConfig
from sciml.train.evaluation import format_metrics
from sciml.train.optim import ExponentialMovingAverage, LearningRateSchedule, build_optimizer
from sciml.train.parallel import average_gradients, broadcast_parameters, broadcast_running_statistics
from sciml.train.problem import make_problem
from sciml.train.report import EpochTable, ProgressReporter, RunLog, data_lines, header_lines, model_line
from sciml.train.signals import StopSignals, TrainingInterrupted

# Keys that may change when a run is resumed; any other difference is refused.
_RESUMABLE_CHANGES = ("epochs", "early_stopping_patience", "device", "valid_batch_size", "checkpoint_every",
                      "keep_checkpoints", "activation_checkpointing", "compile", "compile_backend", "output_dir",
                      "progress_every_s")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_RUN_FILES = ("last.pt", "best.pt", "metrics.csv")


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


def train(config: TrainConfig, resume: "bool | str" = False, verbose: bool = True) -> TrainResult:
    """Train as configured; ``resume`` continues the run in ``config.output_dir`` (see :class:`Trainer`)."""
    return Trainer(config, resume=resume, verbose=verbose).fit()


class Trainer:
    """One training run (see the module docstring for what it writes).

    Construction joins the process group when launched by torchrun, builds the model, reads the
    samples through the problem, makes (or, on resume, reloads) the split and restores the saved
    state; :meth:`fit` trains.

    ``resume``: False starts a new run (refused where one exists); True continues from the newest
    valid checkpoint of the run (``last.pt`` or a step checkpoint; truncated ones are skipped with
    a warning); ``"auto"`` does the same when the run has a checkpoint and starts a new run when the
    folder holds none; a path continues from that checkpoint.

    Raises:
        ValueError: the output directory already holds a run and ``resume`` is False; nothing to
            resume from; a checkpoint of another model, config, data or number of ranks; bad
            data or config; a fine-tune the parent does not allow (:mod:`sciml.train.finetune`);
            :class:`~sciml.distributed.DistributedError` for a broken launch.
    """

    def __init__(self, config: TrainConfig, resume: "bool | str" = False, verbose: bool = True):
        config.validate()
        # a fine-tune's model comes from its parent checkpoint (sciml.train.finetune)
        self.parent = finetune.Parent.load(config.init_from) if config.init_from else None
        self.options_given = dict(config.model.options)  # the header names these; config.yaml all
        if self.parent is not None:
            config = finetune.resolve_config(config, self.parent)
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.context = distributed.setup(config.device)
        self.verbose = verbose and self.context.is_main
        self.device = self.context.device(config.device)
        self.dtype = resolve_dtype(config.dtype)
        self.log = RunLog(echo=self.verbose, write=self.context.is_main)  # train.log, attached in _report_header
        checkpoint = self._check_output_dir(resume)
        torch.manual_seed(config.seed)
        self.model = build_model(config.model.name, config.model.preset, **config.model.options)
        if self.parent is not None and checkpoint is None:
            finetune.start_from_parent(self.model, self.parent, config.reset_heads)
        self.frozen = finetune.freeze_parameters(self.model, config.freeze)
        self.problem = make_problem(config, self.model, self.dtype)
        files = ", ".join(f for f in (config.data.path, config.data.train, config.data.valid, config.data.test) if f)
        self.log.info(f"sciml train: reading {files} for {config.model.name} ...", stderr=True)
        self.samples = self.problem.load()
        self.new_elements: List[int] = []
        if self.parent is not None:
            self.new_elements = finetune.check_new_data(config, self.model, self.parent, self.samples)
            self.problem.kept_element_energies = self.parent.element_energies()
        self.splits = self._load_splits() if checkpoint is not None else self._make_splits(len(self.samples))
        self.train_set, self.valid_set, self.test_set = (
            [self.samples[i] for i in self.splits[name]] for name in ("train", "valid", "test"))
        self.statistics = self.problem.fit(self.train_set)
        if self.parent is not None:
            finetune.after_fit(self.model, self.parent, config.reset_heads)
        self.model.to(device=self.device, dtype=self.dtype)
        broadcast_parameters(self.model, self.context)
        self.optimizer = build_optimizer(self.model, config.optimizer)
        sizes = self.problem.sizes(self.train_set)
        self.sampler = AtomBalancedBatchSampler(
            sizes if sizes is not None else [1] * len(self.train_set), config.batch_size, config.batch_max_atoms,
            num_replicas=self.context.world_size, rank=self.context.rank, seed=config.seed)
        self.atoms_counted = sizes is not None
        steps_per_epoch = math.ceil(len(self.sampler) / config.accumulate_batches)
        self.schedule = LearningRateSchedule(self.optimizer, config.scheduler, steps_per_epoch, config.epochs)
        self.ema = ExponentialMovingAverage(self.model, config.ema_decay) if config.ema_decay is not None else None
        self.amp_dtype = _AMP_DTYPES.get(config.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.start_epoch, self.best_epoch, self.best_valid_loss, self.stale_epochs = 1, 0, math.inf, 0
        self.global_step, self.resume_position, self.resume_sums = 0, 0, (0.0, 0.0, 0.0)
        if checkpoint is not None:
            self._restore(checkpoint)
        if config.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        if config.compile:
            self.problem.compile(config.compile_backend)
        if self.context.is_main:
            self._write_yaml(self.output_dir / "config.yaml", config.to_dict())
        self.table = EpochTable(config.epochs, self._units())
        self.progress = ProgressReporter(self.log, config.epochs, config.progress_every_s, self.context.world_size,
                                         self.atoms_counted)
        self._report_header(checkpoint)

    # ------------------------------------------------------------------------- setup
    def _check_output_dir(self, resume: "bool | str") -> Optional[Dict[str, Any]]:
        """Refuse to overwrite a run; on resume return the checkpoint to continue from after
        checking that it belongs to this config and number of ranks. Reads files only."""
        has_run = any((self.output_dir / name).exists() for name in _RUN_FILES)
        if resume is False:
            if has_run:
                raise ValueError(f"output directory {self.output_dir} already holds a run; use --resume or another directory")
            return None
        if resume is True or resume == "auto":
            found = newest_checkpoint(self.output_dir, self._warn)
            if found is None:
                if resume == "auto" and not has_run:
                    return None
                raise ValueError(f"cannot resume: {self.output_dir} has no checkpoint (start a new run without --resume)")
            path, checkpoint = found
        else:
            path = Path(resume)
            checkpoint = load_checkpoint(path)
        self.resume_path = path
        name = self.config.model.name
        if checkpoint.get("model_name") != name or "train_config" not in checkpoint:
            raise CheckpointError(f"cannot resume from {path}: it holds a {checkpoint.get('model_name')!r} model "
                                  f"{'' if 'train_config' in checkpoint else 'without training state '}"
                                  f"and the config trains {name!r}")
        # the saved config read back with today's defaults, so keys added since it was written
        # (at their default values) are not differences
        saved = TrainConfig.from_dict(checkpoint["train_config"]).to_dict()
        changed = _differences(saved, self.config.to_dict())
        changed = [c for c in changed if c.split(":")[0] not in _RESUMABLE_CHANGES]
        if changed:
            raise ValueError(f"cannot resume {self.output_dir}: the config differs from the saved run at "
                             f"{'; '.join(changed)} (only {', '.join(_RESUMABLE_CHANGES[:-1])} may change; to "
                             f"start a new run from its weights, set init_from: {path})")
        recorded = checkpoint.get("parent") or {}
        if self.parent is not None and recorded.get("sha256") not in (None, self.parent.sha256):
            raise ValueError(f"cannot resume {self.output_dir}: its parent {self.parent.path} has changed since the "
                             f"run began (sha256 {recorded['sha256'][:12]} -> {self.parent.sha256[:12]})")
        saved_ranks = int(checkpoint.get("world_size", 1))
        if saved_ranks != self.context.world_size:
            raise ValueError(f"cannot resume from {path}: it was written by a run of {saved_ranks} rank(s), this one "
                             f"has {self.context.world_size}; the batches per step would differ (launch "
                             f"{saved_ranks} rank(s), or start a new run)")
        self.log.info(f"resuming from {path} (epoch {checkpoint['epoch']}, step {checkpoint.get('global_step', '?')})",
                      stderr=True)
        return checkpoint

    def _warn(self, message: str) -> None:
        """A warning on stderr and in train.log, from rank 0 only."""
        self.log.warn(message)

    def _units(self) -> Dict[str, str]:
        """Units of the properties, for the epoch table: the data's, the model domain's, the known ones."""
        domain = self.problem.domain() or {}
        return {**PROPERTY_UNITS, **self.config.data.property_units, **domain.get("labels", {})}

    def _report_header(self, checkpoint: Optional[Dict[str, Any]]) -> None:
        """Print (and start train.log with) the run's data, model, training and runtime."""
        config = self.config
        if self.context.is_main:
            self.log.attach(self.output_dir)
        state = (f"resumed after epoch {self.start_epoch - 1}" + (f", batch {self.resume_position}" if self.resume_position else "")
                 if checkpoint is not None else "new run")
        batch = (f"{config.batch_size} {'structures' if self.atoms_counted else 'samples'}"
                 + (f" or {config.batch_max_atoms} atoms" if config.batch_max_atoms else ""))
        training = (f"training {config.epochs} epochs x {len(self.sampler)} batches of <= {batch}"
                    + (" per rank" if self.context.enabled else "")
                    + f"; {config.optimizer.name} lr {config.optimizer.lr:g}, {config.scheduler.name} schedule"
                    + (f", EMA {config.ema_decay}" if config.ema_decay is not None else "")
                    + (f", amp {config.amp}" if config.amp != "none" else ""))
        runtime = runtime_line(self.device, self.dtype) + (f", {self.context.world_size} ranks" if self.context.enabled else "")
        splits = {"train": self.train_set, "valid": self.valid_set, "test": self.test_set}
        data = data_lines(config.data.path or config.data.train, splits, self._units())
        if self.parent is not None:
            data.append(finetune.header_line(self.parent, config, self.frozen, len(list(self.model.parameters())),
                                             self.new_elements))
        lines = header_lines(f"sciml train: {self.output_dir} ({state}), {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
                             data, model_line(config.model.name, self.model, self.options_given), training, runtime)
        self.log.info("\n".join(lines))

    def _make_splits(self, total: int) -> Dict[str, List[int]]:
        """Seeded random split, the fixed ``split.ranges``, a benchmark's split (``split.method``)
        or the separate files ``data.train``/``valid``/``test`` (see :meth:`_file_splits`); saved
        to ``splits.json``. Indices are into ``self.samples``."""
        split = self.config.split
        if self.config.data.train:
            return self._save_splits(total, self._file_splits())
        if split.method == "alignn":
            train = split.train
            if train is None:
                counts = isinstance(split.valid, int) and isinstance(split.test, int)
                train = total - split.valid - split.test if counts else 1.0 - float(split.valid) - float(split.test)
            return self._save_splits(total, alignn_split(total, train, split.valid, split.test, split.seed))
        if split.method == "matbench":
            return self._save_splits(total, matbench_split(total, split.fold, split.valid, split.seed))
        if split.ranges:
            return self._save_splits(total, range_split(total, split.ranges, str(self.config.data.path)))
        return self._save_splits(total, random_split(total, split.train, split.valid, split.test, split.seed,
                                                     f"{total} structures"))

    def _file_splits(self) -> Dict[str, List[int]]:
        """The split of separate files: every structure of ``data.valid`` / ``data.test`` is in
        that set; a set without its file is drawn at random from the ``data.train`` file (sizes
        ``split.valid``/``split.test``, seed ``split.seed``), whose other structures are train
        (all of them, or ``split.train``)."""
        split, files = self.config.split, self._sample_files()
        path, start, stop = files["train"]
        drawn = random_split(stop - start, split.train, 0 if "valid" in files else split.valid,
                              0 if "test" in files else split.test, split.seed,
                              f"the {stop - start} structures of data.train {path}", need_valid="valid" not in files)
        splits = {name: [start + i for i in indices] for name, indices in drawn.items()}
        for name in ("valid", "test"):
            if name in files:
                splits[name] = list(range(files[name][1], files[name][2]))
        return splits

    def _sample_files(self) -> Dict[str, Tuple[str, int, int]]:
        """Role (``path``, or ``train``/``valid``/``test``) -> (file, start, stop): where each
        data file's structures lie in ``self.samples`` (the problem's ``files``, else all of
        ``data.path``)."""
        files = getattr(self.problem, "files", None)
        return dict(files) if files else {"path": (str(self.config.data.path), 0, len(self.samples))}

    def _save_splits(self, total: int, splits: Dict[str, List[int]]) -> Dict[str, List[int]]:
        """Write ``splits.json``: per set the file it came from (``files``) and the indices of its
        structures in that file, each file's structure count (``file_structures``), the seed and,
        as before separate files, ``data_path`` (the split file, or ``data.train``) and
        ``num_structures`` (all structures read)."""
        split = self.config.split
        if not self.context.is_main:
            return splits
        files = self._sample_files()
        main = files.get("path", files.get("train"))
        sources, local = {}, {}
        for name, indices in splits.items():
            path, start, stop = next((f for f in files.values() if indices and f[1] <= indices[0] < f[2]), main)
            if any(not start <= i < stop for i in indices):
                raise ValueError(f"the {name} set mixes structures of several data files")  # not made by _make_splits
            sources[name], local[name] = path, [int(i) - start for i in indices]
        sizes = {path: stop - start for path, start, stop in files.values()}
        with atomic_path(self.output_dir / "splits.json") as tmp:
            tmp.write_text(json.dumps({"data_path": main[0], "num_structures": total, "seed": split.seed, **local,
                                       "files": sources, "file_structures": sizes}))
        return splits

    def _load_splits(self) -> Dict[str, List[int]]:
        """The split of the run being resumed, from its ``splits.json`` (as indices into
        ``self.samples``); refused when a file it names is no longer in the config or has changed
        size. A run resumed into another folder from a checkpoint file takes the ``splits.json``
        of the checkpoint's run folder (beside it, or above ``checkpoints/``) and copies it over."""
        path = self.output_dir / "splits.json"
        if not path.exists():
            source = self.resume_path.parent
            source = source.parent if source.name == STEP_FOLDER else source
            if (source / "splits.json").exists() and self.context.is_main:
                with atomic_path(path) as tmp:
                    tmp.write_text((source / "splits.json").read_text())
            path = path if path.exists() else source / "splits.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot resume: {path} is missing or unreadable ({err})") from None
        if "files" not in saved:  # written before separate files: indices into data.path
            if saved["num_structures"] != len(self.samples):
                raise ValueError(f"cannot resume: {self.config.data.path} now holds {len(self.samples)} structures, "
                                 f"the run was split over {saved['num_structures']}")
            return {name: saved[name] for name in ("train", "valid", "test")}
        roles = self._sample_files()
        files = {f[0]: f for f in roles.values()}
        splits = {}
        for name in ("train", "valid", "test"):
            source = saved["files"][name]
            if source not in files:
                raise ValueError(f"cannot resume: the run's {name} set came from {source}, which the config no longer "
                                 f"names (it reads {', '.join(files)})")
            # the set's own file when it has one (a file named twice is read twice)
            _, start, stop = roles[name] if name in roles and roles[name][0] == source else files[source]
            if saved["file_structures"][source] != stop - start:
                raise ValueError(f"cannot resume: {source} now holds {stop - start} structures, the run was split over "
                                 f"{saved['file_structures'][source]}")
            splits[name] = [start + int(i) for i in saved[name]]
        return splits

    def _restore(self, checkpoint: Dict[str, Any]) -> None:
        """Continue exactly where the checkpoint stopped: weights, optimizer, schedule, gradient
        scaler, EMA, position in the epoch, partial training loss and RNGs."""
        self.model.load_state_dict(checkpoint["train_state_dict"] or checkpoint["state_dict"])
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["state_dict"], checkpoint["ema_num_updates"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        rng = checkpoint["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(rng["cuda"]))
        self.start_epoch = checkpoint["epoch"] + 1
        self.global_step = int(checkpoint.get("global_step", 0))
        self.resume_position = int(checkpoint.get("epoch_batches_done", 0))
        if self.context.is_main:  # the partial sums are global; rank 0 carries them on
            self.resume_sums = tuple(checkpoint.get("epoch_partial_sums", (0.0, 0.0, 0.0)))
        self.best_epoch, self.best_valid_loss = checkpoint["best_epoch"], checkpoint["best_metric"]
        self.stale_epochs = checkpoint["stale_epochs"]
        if self.context.is_main:
            self._truncate_metrics(checkpoint["epoch"])

    # ------------------------------------------------------------------------- training
    def fit(self) -> TrainResult:
        """Train from where the run stands to ``config.epochs`` (or an early stop), then test.

        Afterwards the model holds the weights of ``best.pt``.

        Raises:
            TrainingInterrupted: SIGTERM or SIGUSR1 arrived; a step checkpoint was saved first.
        """
        config = self.config
        writer = _tensorboard_writer(self.output_dir / "tensorboard") if self.context.is_main else None
        stopped_early = False
        epoch = self.start_epoch - 1
        try:
            with StopSignals() as signals:
                for epoch in range(self.start_epoch, config.epochs + 1):
                    row = self._run_epoch(epoch, signals)
                    if writer is not None:
                        for name, value in row.items():
                            if name != "epoch":
                                writer.add_scalar(name, value, epoch)
                    if config.early_stopping_patience is not None and self.stale_epochs >= config.early_stopping_patience:
                        stopped_early = True
                        break
        except BaseException as err:
            self.log.log_only(f"stopped in epoch {epoch}: {type(err).__name__}: {err}")
            raise
        finally:
            if writer is not None:
                writer.close()
        self.context.barrier()  # best.pt is complete on disk
        best = load_checkpoint(self.output_dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["state_dict"])
        result = TrainResult(self.output_dir, epoch, self.best_epoch, self.best_valid_loss, stopped_early,
                             valid_metrics=dict(best["valid_metrics"]))
        if self.test_set:
            result.test_metrics = self.problem.evaluate(self.test_set, self._valid_batch_size(), self.device,
                                                        with_loss=False, context=self.context)
            result.baseline_metrics = self.problem.baselines(self.train_set, self.test_set)
            if self.context.is_main:
                with atomic_path(self.output_dir / "test_metrics.json") as tmp:
                    tmp.write_text(json.dumps({"model": result.test_metrics, "baselines": result.baseline_metrics}, indent=1))
        self.log.log_only(result.summary())  # the command prints it
        return result

    def _run_epoch(self, epoch: int, signals: Optional[StopSignals] = None) -> Dict[str, float]:
        """Train one epoch (from the saved position when it was interrupted), validate, log a
        metrics row and save checkpoints; returns the row."""
        config, context = self.config, self.context
        started = time.perf_counter()
        self.model.train()
        self.sampler.set_epoch(epoch)
        batches = list(self.sampler)
        first = self.resume_position if epoch == self.start_epoch else 0
        # (loss x structures, structures, atoms) of this rank, plus the global sums saved mid-epoch
        sums = list(self.resume_sums) if epoch == self.start_epoch else [0.0, 0.0, 0.0]
        restored = list(sums)  # not trained in this process: left out of the throughput
        progress = tqdm(range(first, len(batches)), desc=f"epoch {epoch}/{config.epochs}", leave=False, unit="batch",
                        disable=not (self.verbose and sys.stderr.isatty()))
        self.progress.start_epoch(epoch, len(batches), first)
        lr = self.schedule.base_lrs[0] * self.schedule.current_factor()
        self.optimizer.zero_grad(set_to_none=True)
        for position in progress:
            adapt_threads()
            indices = batches[position]
            batch = self.problem.collate([self.train_set[i] for i in indices]).to(self.device)
            group_start = position - position % config.accumulate_batches
            group = min(config.accumulate_batches, len(batches) - group_start)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss = self.problem.loss(batch, self.problem.outputs(batch))
            self.scaler.scale(loss / group).backward()
            sums[0] += float(loss.detach()) * len(indices)
            sums[1] += len(indices)
            sums[2] += self._atoms(batch)
            progress.set_postfix(loss=f"{float(loss.detach()):.4g}")
            self.progress.batch_done(position + 1, len(indices), self._atoms(batch), float(loss.detach()))
            if position + 1 - group_start < group:
                continue
            received = signals.received if signals is not None else None
            lr, stop = self._optimizer_step(received is not None)
            every = config.checkpoint_every
            if stop or (every is not None and self.global_step % every == 0 and position + 1 < len(batches)):
                path = self._save_step_checkpoint(epoch, position + 1, sums)
                if stop:
                    raise TrainingInterrupted(received or signal.SIGTERM, str(path))
        loss_sum, seen, atoms, _, restored_seen, restored_atoms = context.all_reduce_sum(sums + restored)
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"training loss became {loss_sum} in epoch {epoch}; lower optimizer.lr or set grad_clip")
        train_time = time.perf_counter() - started

        with self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext():
            valid = self.problem.evaluate(self.valid_set, self._valid_batch_size(), self.device, with_loss=True,
                                          context=self.context)
        valid_loss = valid.pop("loss")
        if not math.isfinite(valid_loss):
            raise FloatingPointError(f"validation loss became {valid_loss} in epoch {epoch}; lower optimizer.lr or set grad_clip")
        valid.pop(self.problem.count_key)
        self.schedule.end_epoch(valid_loss)
        improved = valid_loss < self.best_valid_loss
        if improved:
            self.best_epoch, self.best_valid_loss, self.stale_epochs = epoch, valid_loss, 0
        else:
            self.stale_epochs += 1
        row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "valid_loss": valid_loss,
               **{f"valid_{k}": v for k, v in valid.items()}, "lr": lr, "epoch_time_s": time.perf_counter() - started,
               "samples_per_s": (seen - restored_seen) / train_time,
               **({"atoms_per_s": (atoms - restored_atoms) / train_time} if self.atoms_counted else {}),
               "peak_memory_mb": _peak_memory_mb(self.device)}
        if context.is_main:
            self._append_metrics(row)
            payload = self._checkpoint_payload(epoch, valid, 0, (0.0, 0.0, 0.0))
            if improved:
                save_checkpoint(self.output_dir / "best.pt", **payload)
            save_checkpoint(self.output_dir / "last.pt", **payload)
        self.progress.end_epoch(row["epoch_time_s"])
        if not self.table.keys:
            self.log.info("\n".join(self.table.header(row)))
        self.log.info(self.table.row(row, improved))
        return row

    def _optimizer_step(self, stop_requested: bool) -> Tuple[float, bool]:
        """Average gradients over ranks, clip, step (through the fp16 scaler), update the EMA and
        the ranks' batch-norm statistics; returns the learning rate used and whether any rank
        was asked to stop (agreed in the gradients' all-reduce)."""
        lr = self.schedule.apply()
        stop = average_gradients(self.model, self.context, [float(stop_requested)])[0] > 0
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        broadcast_running_statistics(self.model, self.context)
        self.global_step += 1
        return lr, stop

    def _atoms(self, batch: Any) -> int:
        return int(batch.num_nodes) if self.atoms_counted else 0

    def _save_step_checkpoint(self, epoch: int, batches_done: int, sums: List[float]) -> Path:
        """Rank 0 writes ``checkpoints/step-<global step>.pt`` (mid-epoch ``epoch``, after
        ``batches_done`` batches) and prunes old ones; every rank waits until it is on disk."""
        totals = self.context.all_reduce_sum(sums)
        path = step_checkpoint_path(self.output_dir, self.global_step)
        if self.context.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            payload = self._checkpoint_payload(epoch - 1, {}, batches_done, tuple(totals))
            save_checkpoint(path, **payload)
            prune_step_checkpoints(self.output_dir, self.config.keep_checkpoints)
        self.context.barrier()
        return path

    def _valid_batch_size(self) -> int:
        return self.config.valid_batch_size or self.config.batch_size

    # ------------------------------------------------------------------------- files
    def _checkpoint_payload(self, epoch: int, valid_metrics: Dict[str, float], batches_done: int,
                            partial_sums: Tuple[float, float, float]) -> Dict[str, Any]:
        """Everything to resume: ``epoch`` is the last finished epoch, ``batches_done`` the batches of
        the next one already trained (0 at an epoch end) and ``partial_sums`` their global
        (loss x samples, samples, atoms)."""
        model = self.model
        weights = self.ema.averaged_state_dict(model) if self.ema is not None else model.state_dict()
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return dict(
            state_dict=weights,
            model_name=model.model_name,
            options=model.options.to_dict(),
            statistics=self.statistics,
            domain=self.problem.domain(),
            train_state_dict=model.state_dict() if self.ema is not None else None,
            ema_num_updates=self.ema.num_updates if self.ema is not None else None,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.schedule.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            epoch=epoch,
            global_step=self.global_step,
            epoch_batches_done=batches_done,
            epoch_partial_sums=list(partial_sums),
            world_size=self.context.world_size,
            best_epoch=self.best_epoch,
            best_metric=self.best_valid_loss,
            stale_epochs=self.stale_epochs,
            valid_metrics=valid_metrics,
            rng=rng,
            train_config=self.config.to_dict(),
            parent=self.parent.record() if self.parent is not None else None,
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


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on a CUDA device, else the process's peak resident memory (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

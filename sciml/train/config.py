"""The training configuration: typed sections, strict YAML loading and dotted overrides.

A config file is YAML whose keys mirror :class:`TrainConfig`; only the data is required (``data.path``,
a file split into train/valid/test, or ``data.train`` with optional ``data.valid``/``data.test`` files)::

    model: {name: egnn, preset: null, options: {hidden: 64, layers: 4}}
    data: {path: datasets/ethanol_xtb_500K/ethanol_xtb_500K.extxyz}
    optimizer: {lr: 1.0e-3}
    epochs: 200

Unknown keys are errors that suggest the closest valid key, and every key can be overridden with
a dotted ``KEY=VALUE`` string (the value parsed as YAML), e.g. ``optimizer.lr=5e-4``.
Relative paths are relative to the working directory.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from sciml.devices import dtype_name, resolve_dtype

# torch.compile backends of ``compile_backend`` (see sciml.train.compile)
COMPILE_BACKENDS = ("inductor", "aot_eager")
# functions of one loss term (loss.functions; see LossConfig)
LOSS_FUNCTIONS = ("mse", "mae", "huber")


@dataclass
class ModelConfig:
    """Which model to build: ``build_model(name, preset, **options)`` (a named preset of the
    model, or None for its defaults, with ``options`` overriding its fields).

    ``name`` None is ``egnn``, or with ``init_from`` the checkpoint's model (whose options are then
    the base that ``options`` override; see :mod:`sciml.train.finetune`)."""

    name: Optional[str] = None
    preset: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # configs written before ``model.preset`` existed named the preset among the options
        if "preset" in self.options:
            options = dict(self.options)
            preset = options.pop("preset")
            if self.preset not in (None, preset):
                raise ValueError(f"config key model.preset {self.preset!r} and model.options.preset {preset!r} differ")
            self.preset, self.options = preset, options


@dataclass
class DataConfig:
    """Where the labelled structures are and under which keys their labels are stored.

    ``cutoff`` (Å) is the radius the graphs are built with; None uses the model's cutoff, and a
    given value must not be smaller than it. ``max_neighbors`` None likewise uses the model's.
    ``energy_key`` None (or a file without energies) trains a model on properties alone.

    ``property_keys`` are extra per-structure (``info``) or per-atom (``arrays``) values loaded
    into the graphs: model inputs (e.g. velocities) as well as labels. A label is compared with
    the model output of the same name unless ``prediction_keys`` maps it to another one, e.g.
    ``{positions_target: positions}`` when the model predicts ``positions`` and the file stores
    the target positions under ``positions_target``. ``property_units`` names the unit of each
    property label (``{formation_energy_peratom: eV/atom}``), recorded in the checkpoint's domain;
    the targets of the crystal benchmarks have theirs already.

    Crystal datasets: ``format`` ``jarvis`` (JARVIS-DFT ``dft_3d`` JSON), ``matbench`` (a MatBench
    task file), ``mp`` (pymatgen Structure JSON, or a folder of CIFs with a CSV/JSON of targets at
    ``targets_path``) or ``cif`` read the single label named in ``property_keys`` (entries
    without it are dropped); see :mod:`sciml.data.crystals`.

    Fields for neural operators: ``format`` ``fno_mat`` (an FNO ``.mat`` file) or ``pdebench`` (a
    PDEBench HDF5 file), with the ``fields`` section saying what to read and predict.

    Separate files: ``train``, ``valid`` and ``test`` (each read like ``path``, with the same keys
    and ``format``) replace ``path``; ``valid`` and ``test`` are optional, and a set not given as a
    file is drawn at random from the ``train`` file with the size ``split.valid`` / ``split.test``
    says (``split.test: 0`` for no test set). ``path`` and ``train`` exclude each other.

    ``element_energies`` sets the energy head's per-element reference energies (eV), which the
    model's per-atom energies are added to: ``fit`` (least squares on the training set), ``zero``
    (none: the model learns the total energy, e.g. for energies already referenced) or a mapping
    of element symbols to energies in eV, ``{H: -13.6, O: -432.1}``, that must name every element
    of the data. With ``init_from`` also ``refit`` (least squares on the new training set, as
    ``fit``: new data usually comes from other DFT settings, whose energies differ by a constant
    per element) and ``keep`` (the parent checkpoint's references). None (the default) is ``fit``,
    or ``refit`` with ``init_from``; the resolved config names the choice.

    ``format`` names a registered format (:mod:`sciml.data.formats`: those above, ``ase``,
    ``oc20`` and its sources ``s2ef-extxyz``, ``ase-db``, ``legacy-lmdb``, ``sciml-cache``, and
    any a plugin registers). None recognises OC20 sources by their path (a directory of S2EF
    ``*.extxyz.xz`` + ``*.txt`` files or one such file, a fairchem ``*.lmdb`` file or directory, a
    sciml cache) and files of plugin formats that detect themselves, and reads anything else with ase; ``oc20`` also reads an ASE database the OC20 way (tags, fixed
    atoms, ``sid``/``fid`` and reference energies); ``ase`` always uses ase. OC20 sources carry
    fixed label names: energy (adsorption energy, referenced), forces, and the properties of
    :mod:`sciml.data.oc20.records` (e.g. ``relaxed_energy`` for IS2RE); ``energy_key`` or
    ``forces_key`` None drops that label.
    """

    path: Optional[str] = None
    train: Optional[str] = None
    valid: Optional[str] = None
    test: Optional[str] = None
    format: Optional[str] = None
    targets_path: Optional[str] = None
    energy_key: Optional[str] = "energy"
    forces_key: Optional[str] = "forces"
    stress_key: Optional[str] = "stress"
    property_keys: List[str] = field(default_factory=list)
    prediction_keys: Dict[str, str] = field(default_factory=dict)
    property_units: Dict[str, str] = field(default_factory=dict)
    cutoff: Optional[float] = None
    max_neighbors: Optional[int] = None
    element_energies: Optional[Union[str, Dict[str, float]]] = None


@dataclass
class SplitConfig:
    """Random train/valid/test split: a float in [0, 1] is a fraction, an int a count.

    ``train`` None takes every structure not in valid or test. With separate files
    (``data.train``) the split draws from the ``data.train`` file the sets not given as files
    (``valid``, ``test``) and ``ranges`` and ``method`` do not apply.

    ``ranges`` replaces the random split by fixed, half-open index ranges of the data file,
    ``{train: [start, stop], valid: [start, stop], test: [start, stop]}`` (test may be omitted),
    for benchmarks whose split is prescribed; the other keys are then ignored.

    ``method`` picks the benchmark splits of crystal datasets: ``alignn`` is ALIGNN's and
    ComFormer's JARVIS split (python ``random.shuffle`` with ``seed``; valid and test are the
    fractions ``valid`` and ``test``, train the rest: 44,578 / 5,572 / 5,572 for formation
    energy with seed 123); ``matbench`` takes MatBench's official fold ``fold`` (0-4) as the test
    set (scikit-learn KFold, 5 folds, shuffled, random_state 18012019) and a random ``valid``
    fraction of the fold's training set for validation.
    """

    train: Optional[Union[int, float]] = None
    valid: Union[int, float] = 0.1
    test: Union[int, float] = 0.1
    seed: int = 0
    ranges: Dict[str, List[int]] = field(default_factory=dict)
    method: str = field(default="random", metadata={"choices": ("random", "alignn", "matbench")})
    fold: int = 0


@dataclass
class OptimizerConfig:
    name: str = field(default="adam", metadata={"choices": ("adam", "adamw")})
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class SchedulerConfig:
    """Learning-rate schedule after a linear warm-up of ``warmup_epochs`` epochs.

    cosine: decay to 1% of ``lr`` at the last epoch. onecycle: the warm-up (30% of training when
    ``warmup_epochs`` is 0) rises from ``lr``/25, then cosine decay to ``lr``/1e4. plateau: multiply
    by ``factor`` when the validation loss has not improved for ``patience`` epochs. none: constant.
    """

    name: str = field(default="cosine", metadata={"choices": ("cosine", "plateau", "onecycle", "none")})
    warmup_epochs: int = 0
    factor: float = 0.5
    patience: int = 10


@dataclass
class LossConfig:
    """Weights and functions of the loss terms; a term is used only when its labels are present.

    The loss is the weighted sum of one term per target::

        loss:
          energy: 1.0            # weights (>= 0; 0 drops the term)
          forces: 10.0
          stress: 1.0
          properties: {gap: 1.0}
          function: mse          # every term's function: mse | mae | huber | oc20
          functions: {energy: huber, forces: mae, gap: mae}   # per-target: mse | mae | huber
          huber_delta: 0.01      # or per target: {energy: 0.01, forces: 0.05}

    Each term compares errors made dimensionless by a training-set scale: energy per atom by the
    energy head's scale (the force RMS x 1 Å when forces are labelled), forces and stress by the
    RMS of their labels, a property by its standard deviation. ``mse`` is the mean of the squared
    scaled errors, ``mae`` the mean of their absolute values (over atoms and components for
    forces, over structures for energy per atom), ``huber`` the mean Huber loss (quadratic below
    ``huber_delta``, linear above). ``huber_delta`` is in the label's own unit (eV/atom for
    energy, eV/Å for forces, eV/Å^3 for stress, the property's unit) and is scaled with the error,
    so huber term = Huber(error, delta) / scale^2. ``properties`` (and ``functions``) are keyed by
    label (see ``data.prediction_keys`` for labels whose model output has another name).

    ``function: oc20`` uses fairchem's OC20 losses for the terms not named in ``functions``: the
    mean absolute error of total energies and the mean over atoms of the force error's norm
    (L2-MAE), with the same scales (stress and properties: mse). ``free_atoms_only`` leaves atoms
    marked ``fixed`` (an atom property, e.g. OC20's fixed subsurface) out of the force terms, as
    OC20 training does.
    """

    energy: float = 1.0
    forces: float = 10.0
    stress: float = 1.0
    properties: Dict[str, float] = field(default_factory=dict)
    function: str = field(default="mse", metadata={"choices": ("mse", "mae", "huber", "oc20")})
    functions: Dict[str, str] = field(default_factory=dict)
    huber_delta: Union[float, Dict[str, float]] = 0.01
    free_atoms_only: bool = False


@dataclass
class FieldConfig:
    """Neural-operator training on trajectories (``data.format`` fno_mat or pdebench; see
    :mod:`sciml.train.fields`).

    ``key``: the ``.mat`` variable; ``kind`` (incompressible-ns, shallow-water,
    diffusion-reaction) and ``channel`` (which variable) for PDEBench files. The model sees
    ``t_in`` steps and predicts ``steps`` (2D models autoregressively, with ``teacher_forcing`` in
    training if set; 3D models at once). ``transforms`` are the test-set transforms evaluated
    (identity, rot90, rot180, rot270, reflect); ``extra_test`` names more test files, e.g.
    ``{x128: ns_128.mat}`` for super-resolution.
    """

    key: str = "u"
    kind: Optional[str] = None
    channel: int = 0
    t_in: int = 10
    steps: int = 20
    teacher_forcing: bool = False
    transforms: List[str] = field(default_factory=lambda: ["identity", "rot90"])
    extra_test: Dict[str, str] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Everything a training run depends on (see the module docstring for the YAML form).

    ``batch_max_atoms`` balances training batches by atom count (fairchem's ``load_balancing:
    atoms``): a batch grows while it stays within that many atoms, at most ``batch_size``
    structures. ``valid_batch_size`` None uses ``batch_size``; ``ema_decay`` None disables the exponential
    moving average of weights; ``grad_clip`` None disables gradient-norm clipping;
    ``early_stopping_patience`` None never stops early; ``device`` "auto" picks CUDA when present.

    Long runs and clusters (launched by ``torchrun`` the run is data-parallel: ``batch_size`` is
    per rank, the global batch ``batch_size x ranks``; see :mod:`sciml.train.trainer`):
    ``amp`` autocast precision (``bf16``; ``fp16`` with a gradient scaler); ``accumulate_batches``
    batches per optimizer step; ``checkpoint_every`` optimizer steps between step checkpoints
    (None: only at epoch ends), of which the newest ``keep_checkpoints`` are kept;
    ``activation_checkpointing`` recomputes each block's activations in the backward pass (less
    memory, about a third more time); ``compile`` runs the training forward pass through
    ``torch.compile`` (with forces and stress too: see :mod:`sciml.train.compile`), with the
    ``compile_backend`` ``inductor`` (generated kernels) or ``aot_eager`` (the same graphs run op by
    op: compiles in seconds, to check that a model compiles). ``dtype`` float32 (also ``single``)
    or float64 (``double``); ``progress_every_s``: seconds between progress lines (batches,
    throughput, ETA) in ``train.log`` and, when stderr is not a terminal, on stderr.

    Fine-tuning (:mod:`sciml.train.finetune`): ``init_from`` starts a new run from the weights of a
    checkpoint (a sciml checkpoint or a fairchem EquiformerV2 one: whatever
    :func:`sciml.inference.load_model` reads), with this config's data, split, optimizer and
    schedule; ``freeze`` lists parameter names or glob patterns (``blocks.0.*``, ``embedding.*``;
    a module name freezes all its parameters) kept as they are; ``reset_heads`` re-initialises the
    model's output heads (with ``init_from`` only).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    fields: FieldConfig = field(default_factory=FieldConfig)
    epochs: int = 100
    batch_size: int = 16
    batch_max_atoms: Optional[int] = None
    valid_batch_size: Optional[int] = None
    ema_decay: Optional[float] = None
    grad_clip: Optional[float] = None
    early_stopping_patience: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/train"
    dtype: str = field(default="float32", metadata={"choices": ("float32", "float64", "single", "double")})
    amp: str = field(default="none", metadata={"choices": ("none", "bf16", "fp16")})
    accumulate_batches: int = 1
    checkpoint_every: Optional[int] = None
    keep_checkpoints: int = 2
    activation_checkpointing: bool = False
    compile: bool = False
    compile_backend: str = field(default="inductor", metadata={"choices": COMPILE_BACKENDS})
    progress_every_s: float = 30.0
    init_from: Optional[str] = None
    freeze: List[str] = field(default_factory=list)
    reset_heads: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint friendly) that :meth:`from_dict` reads back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build and validate a config; unknown keys, wrong types and bad values raise ValueError."""
        config = _build(cls, values, "")
        config.validate()
        return config

    def _validate_data(self) -> None:
        """The data files (``data.path`` or ``data.train``/``valid``/``test``) and
        ``data.element_energies``."""
        from sciml.data.formats import FIELDS, format_names, get_format  # imports the readers

        data = self.data
        if data.format is not None:
            _coerce(data.format, str, "data.format", format_names())  # one line naming the registered formats
        if data.path and data.train:
            raise ValueError("config keys data.path and data.train exclude each other: give one file to split "
                             "(data.path) or separate files (data.train, data.valid, data.test)")
        for name in ("valid", "test"):
            if getattr(data, name) and not data.train:
                raise ValueError(f"config key data.{name} needs data.train (with data.path the {name} set is split "
                                 f"off as split.{name} says)")
        if not data.path and not data.train:
            raise ValueError("missing required config key data.path (the labelled structures file), "
                             "or data.train (with optional data.valid, data.test)")
        if data.train:
            if data.format is not None and get_format(data.format).kind == FIELDS:
                raise ValueError(f"config key data.train: data.format {data.format} reads one file, data.path")
            if self.split.ranges or self.split.method != "random":
                raise ValueError("config keys split.ranges and split.method index one data.path file; with data.train "
                                 "give the sets as files (data.valid, data.test) or as random fractions")
        choice = data.element_energies
        if choice is None:
            data.element_energies = choice = "refit" if self.init_from else "fit"
        if isinstance(choice, str):
            if choice not in ("fit", "zero", "refit", "keep"):
                raise ValueError(f"config key data.element_energies must be fit, zero, refit, keep or a mapping "
                                 f"{{symbol: eV}}, got {choice!r}")
            if choice in ("refit", "keep") and not self.init_from:
                raise ValueError(f"config key data.element_energies {choice} needs init_from (the checkpoint to "
                                 f"fine-tune); without it use fit")
        else:
            from ase.data import atomic_numbers

            for symbol in choice:
                if symbol not in atomic_numbers or atomic_numbers[symbol] == 0:
                    raise ValueError(f"config key data.element_energies has {symbol!r}, which is not an element symbol")

    def _validate_loss(self) -> None:
        """``loss.functions`` (known targets and functions) and ``loss.huber_delta`` (positive)."""
        loss = self.loss
        targets = ("energy", "forces", "stress", *loss.properties)
        for target, function in loss.functions.items():
            if target not in targets:
                raise ValueError(f"config key loss.functions.{target}: {target!r} is not a loss term (energy, forces, "
                                 f"stress or a label of loss.properties)")
            if function not in LOSS_FUNCTIONS:
                close = difflib.get_close_matches(str(function), LOSS_FUNCTIONS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"config key loss.functions.{target} must be one of {', '.join(LOSS_FUNCTIONS)}, "
                                 f"got {function!r}{hint}")
        deltas = loss.huber_delta if isinstance(loss.huber_delta, dict) else {"": loss.huber_delta}
        for target, delta in deltas.items():
            name = f"loss.huber_delta.{target}" if target else "loss.huber_delta"
            if target and target not in targets:
                raise ValueError(f"config key {name}: {target!r} is not a loss term (energy, forces, stress or a "
                                 f"label of loss.properties)")
            if not delta > 0:
                raise ValueError(f"config key {name} must be positive, got {delta}")
        if isinstance(loss.huber_delta, dict):
            for target in targets:
                if loss.functions.get(target, loss.function) == "huber" and target not in loss.huber_delta:
                    raise ValueError(f"config key loss.huber_delta has no delta for {target!r}, whose loss is huber")

    def validate(self) -> None:
        """Check values that types alone cannot (ranges, required keys, consistency); ``dtype``
        single/double becomes float32/float64."""
        self.dtype = dtype_name(resolve_dtype(self.dtype))
        if self.model.name is None and not self.init_from:
            self.model.name = "egnn"
        if self.reset_heads and not self.init_from:
            raise ValueError("config key reset_heads needs init_from (the checkpoint whose heads to reset)")
        self._validate_data()
        self._validate_loss()
        positive = {
            "epochs": self.epochs, "batch_size": self.batch_size, "valid_batch_size": self.valid_batch_size,
            "batch_max_atoms": self.batch_max_atoms,
            "early_stopping_patience": self.early_stopping_patience, "data.max_neighbors": self.data.max_neighbors,
            "scheduler.patience": self.scheduler.patience, "optimizer.lr": self.optimizer.lr,
            "grad_clip": self.grad_clip, "data.cutoff": self.data.cutoff, "scheduler.factor": self.scheduler.factor,
            "accumulate_batches": self.accumulate_batches, "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints, "progress_every_s": self.progress_every_s,
        }
        non_negative = {
            "optimizer.weight_decay": self.optimizer.weight_decay, "scheduler.warmup_epochs": self.scheduler.warmup_epochs,
            "loss.energy": self.loss.energy, "loss.forces": self.loss.forces, "loss.stress": self.loss.stress,
            "split.train": self.split.train, "split.valid": self.split.valid, "split.test": self.split.test,
            **{f"loss.properties.{k}": v for k, v in self.loss.properties.items()},
        }
        for name, value in positive.items():
            if value is not None and not value > 0:
                raise ValueError(f"config key {name} must be positive, got {value}")
        for name, value in non_negative.items():
            if value is not None and not value >= 0:
                raise ValueError(f"config key {name} must be >= 0, got {value}")
        if self.fields.t_in < 1 or self.fields.steps < 1:
            raise ValueError(f"config keys fields.t_in and fields.steps must be positive, got {self.fields.t_in}, "
                             f"{self.fields.steps}")
        if not 0 <= self.split.fold < 5:
            raise ValueError(f"config key split.fold must be a MatBench fold 0-4, got {self.split.fold}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"config key ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.scheduler.factor >= 1:
            raise ValueError(f"config key scheduler.factor must be < 1, got {self.scheduler.factor}")
        for name in ("train", "valid", "test"):
            value = getattr(self.split, name)
            if isinstance(value, float) and value > 1:
                raise ValueError(f"config key split.{name} is a fraction ({value}) above 1; write an integer for a count")
        for key in self.loss.properties:
            if key not in self.data.property_keys:
                raise ValueError(f"loss.properties has {key!r}, which is not in data.property_keys {self.data.property_keys}")
        for key in self.data.prediction_keys:
            if key not in self.data.property_keys:
                raise ValueError(f"data.prediction_keys has {key!r}, which is not in data.property_keys {self.data.property_keys}")
        if self.split.ranges:
            unknown = set(self.split.ranges) - {"train", "valid", "test"}
            if unknown or not {"train", "valid"} <= set(self.split.ranges):
                raise ValueError(f"config key split.ranges needs train and valid (and optionally test) ranges, "
                                 f"got {sorted(self.split.ranges)}")
            for name, bounds in self.split.ranges.items():
                if len(bounds) != 2 or not 0 <= bounds[0] < bounds[1]:
                    raise ValueError(f"config key split.ranges.{name} must be [start, stop] with 0 <= start < stop, got {bounds}")
            spans = sorted(tuple(b) for b in self.split.ranges.values())
            if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
                raise ValueError(f"config key split.ranges has overlapping ranges: {self.split.ranges}")
        if self.amp != "none" and self.dtype != "float32":
            raise ValueError(f"config key amp={self.amp} needs dtype float32 (autocast lowers float32), got {self.dtype}")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
            raise ValueError(f"config key device must be auto, cpu, cuda, cuda:N, mps or xpu, got {self.device!r}")


def load_config(
    path: "str | Path | None",
    overrides: "Mapping[str, Any] | Sequence[str] | None" = None,
) -> TrainConfig:
    """Read a YAML config, apply overrides (see :func:`apply_overrides`) and validate it.

    ``path`` None starts from the defaults (then ``data.path`` must come from an override).
    """
    values: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        values = loaded or {}
    return TrainConfig.from_dict(apply_overrides(values, overrides or ()))


def apply_overrides(
    config: Mapping[str, Any], overrides: "Mapping[str, Any] | Sequence[str]"
) -> Dict[str, Any]:
    """A copy of the nested ``config`` dict with dotted overrides applied.

    ``overrides`` is a list of ``"section.key=value"`` strings, whose values are parsed as YAML
    (``1e-3`` and ``5`` become numbers, ``null`` None, ``[a, b]`` a list), or a mapping of dotted
    keys to already typed values. Misspelled keys are reported by :meth:`TrainConfig.from_dict`.
    """
    result = copy.deepcopy(dict(config))
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            key, sep, raw = str(text).partition("=")
            if not sep or not key.strip():
                raise ValueError(f"override {text!r} must look like KEY=VALUE, e.g. optimizer.lr=1e-3")
            try:
                items.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
            except yaml.YAMLError:
                raise ValueError(f"override {text!r}: the value is not valid YAML") from None
    for key, value in items:
        *parents, leaf = key.split(".")
        node = result
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"override {key!r}: {'.'.join(parents[:depth + 1])} is not a section")
            node = child
        node[leaf] = value
    return result


# ------------------------------------------------------------------------------- validation


def _all_keys(cls: type, prefix: str = "") -> List[str]:
    """Every dotted key of a config dataclass, sections included."""
    keys = []
    for name, kind in typing.get_type_hints(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(kind):
            keys += _all_keys(kind, f"{prefix}{name}.")
    return keys


def _unknown_key_error(key: str, where: str, cls: type) -> ValueError:
    valid = [f.name for f in dataclasses.fields(cls)]
    full = where + key
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        hint = f"; did you mean {where + close[0]!r}?"
    else:
        everywhere = _all_keys(TrainConfig)
        same_leaf = [k for k in everywhere if k.rsplit(".", 1)[-1] == key]
        close = same_leaf or difflib.get_close_matches(full, everywhere, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys here: {', '.join(valid)}"
    return ValueError(f"unknown config key {full!r}{hint}")


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError(f"config key {where.rstrip('.') or '<top>'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key_error(str(key), where, cls)
        kwargs[key] = _coerce(value, hints[key], where + key, names[key].metadata.get("choices"))
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, name: str, choices: Optional[Sequence[str]] = None) -> Any:
    """``value`` converted to the annotated type ``kind``, or a ValueError naming the key."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        return _build(kind, value if value is not None else {}, name + ".")
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) > 1 and set(options) != {int, float}:
            # e.g. Union[str, Dict[str, float]]: the first type the value is of
            accepts = {float: (int, float, str), dict: Mapping}
            matching = [a for a in options if not isinstance(value, bool)
                        and isinstance(value, accepts.get(typing.get_origin(a) or a, typing.get_origin(a) or a))]
            if not matching:
                names = " or ".join(getattr(typing.get_origin(a) or a, "__name__", str(a)) for a in options)
                raise ValueError(f"config key {name} must be a {names}, got {value!r}")
            return _coerce(value, matching[0], name, choices)
        if set(options) == {int, float}:
            if isinstance(value, str):
                value = _parse_number(value, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"config key {name} must be a number (fraction or count), got {value!r}")
            return value
        return _coerce(value, options[0], name, choices)
    if kind is float:
        if isinstance(value, str):
            value = _parse_number(value, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"config key {name} must be a finite number, got {value!r}")
        return float(value)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"config key {name} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {name} must be an integer, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {name} must be a string, got {value!r}")
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"config key {name} must be one of {', '.join(choices)}, got {value!r}{hint}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {name} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{name}[{n}]") for n, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {name} must be a mapping, got {value!r}")
        return {str(k): v if args[1] is Any else _coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config annotation {kind!r} for {name}")


def _parse_number(text: str, name: str) -> "int | float":
    """YAML 1.1 reads ``1e-3`` as a string; accept it (and ints) here."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    raise ValueError(f"config key {name} must be a number, got {text!r}")

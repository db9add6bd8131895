"""Training on atomic structures: the graph data, labels, losses and metrics of energy models
(energy, forces, stress) and of property models, for :class:`~sciml.train.trainer.Trainer`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from ase.data import atomic_numbers, chemical_symbols

from sciml.data.crystals import read_crystal_dataset
from sciml.data.formats import CRYSTALS, DEFAULT_FORMAT, OC20, STRUCTURES, DataFormat, detect_format, get_format
from sciml.data.oc20.sources import load_graphs
from sciml.data.readers import check_structures, load_graph_dataset
from sciml.graph import AtomicGraph, GraphSpec
from sciml.inference import model_outputs
from sciml.models.domain import LABEL_UNITS, PROPERTY_UNITS, ModelDomain
from sciml.models.heads import NUM_ELEMENTS, PropertyHead, element_counts, energy_head, fit_element_energies
from sciml.distributed import DistributedContext
from sciml.train.compile import CompiledOutputs, compile_model
from sciml.train.config import DataConfig, TrainConfig
from sciml.train.evaluation import error_sums, evaluate, mean_baseline_metrics, metrics_from_sums


References = Union[str, Mapping[str, float], torch.Tensor]


def reference_energies(choice: References, graphs: Sequence[AtomicGraph]) -> torch.Tensor:
    """Per-element reference energies (NUM_ELEMENTS,) float64 eV of ``data.element_energies``
    ``zero`` (all 0) or a mapping {symbol: eV} (exactly those values, 0 for unnamed elements), or
    given references (NUM_ELEMENTS,) eV (a fine-tune's ``keep``: the parent's), returned as they are.

    Raises:
        ValueError: a symbol that is no element, or an element of ``graphs`` the mapping lacks.
    """
    if isinstance(choice, torch.Tensor):
        return choice.detach().to(torch.float64).cpu().clone()
    energies = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)
    if isinstance(choice, str):
        if choice != "zero":
            raise ValueError(f"data.element_energies {choice!r} has no fixed values "
                             f"(use zero or a mapping {{symbol: eV}})")
        return energies
    for symbol, value in choice.items():
        if atomic_numbers.get(symbol, 0) == 0 or atomic_numbers[symbol] >= NUM_ELEMENTS:
            raise ValueError(f"config key data.element_energies has {symbol!r}, which is not an element symbol")
        energies[atomic_numbers[symbol]] = float(value)
    present = sorted({int(z) for g in graphs for z in g.atomic_numbers.unique().tolist()})
    missing = [chemical_symbols[z] for z in present if chemical_symbols[z] not in choice]
    if missing:
        raise ValueError(f"config key data.element_energies has no energy for {', '.join(missing)}, which the data "
                         f"holds (give every element, or use fit or zero)")
    return energies


def fit_statistics(graphs: Sequence[AtomicGraph], property_keys: Sequence[str] = (),
                   element_energies: References = "fit") -> Dict[str, Any]:
    """Training-set statistics for the energy head and the loss normalisation.

    ``element_energies`` (``data.element_energies``): ``fit`` (or ``refit``) fits the per-element
    reference energies by least squares, ``zero`` sets them to 0, a mapping {symbol: eV} or a
    tensor (NUM_ELEMENTS,) eV to its values (see :func:`reference_energies`).

    Returns ``element_energies`` (119,) eV (the per-element reference energies; None,
    like ``energy_rms_per_atom`` and ``energy_scale``, when the graphs carry no energies),
    ``energy_rms_per_atom`` eV (RMS per-atom residual of those references), ``forces_rms`` eV/Å and
    ``stress_rms`` eV/Å^3 (RMS of the label components, None without labels), ``property_mean``
    and ``property_std`` (each property's mean and standard deviation) and ``energy_scale`` eV, the energy head's per-atom
    scale: ``forces_rms`` x 1 Å when forces are labelled (as MACE's default), since a model
    whose outputs vary by O(1) per Å then meets forces of the right size, else
    ``energy_rms_per_atom``. A statistic that is zero (a constant label) is replaced by 1.
    """
    def rms(values: torch.Tensor) -> float:
        value = float(values.double().square().mean().sqrt())
        return value if value > 1e-12 else 1.0

    references, residual_rms = None, None
    if graphs[0].energy is not None:
        energies = torch.cat([g.energy for g in graphs]).double().cpu()
        if isinstance(element_energies, str) and element_energies in ("fit", "refit"):
            references, residual_rms = fit_element_energies(list(graphs), energies)
        else:
            references = reference_energies(element_energies, graphs)
            counts = element_counts(list(graphs))
            residual = (energies - counts @ references) / counts.sum(1).clamp(min=1)
            residual_rms = float(residual.square().mean().sqrt())
        references, residual_rms = references.double().cpu(), residual_rms if residual_rms > 1e-12 else 1.0
    stats: Dict[str, Any] = {
        "element_energies": references,
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


class AtomisticProblem:
    """Structures as :class:`AtomicGraph` s, built as the model's graph spec says.

    An energy model (one :class:`EnergyHead`) is trained on energy/forces/stress and properties;
    any other model on the properties of ``loss.properties``. :meth:`fit` sets the heads'
    training statistics (per-element energies and scale, property means and standard deviations).
    """

    count_key = "num_structures"

    def __init__(self, config: TrainConfig, model: torch.nn.Module, dtype: torch.dtype):
        self.config, self.model, self.dtype = config, model, dtype
        self.statistics: Dict[str, Any] = {}
        self.use_forces = self.use_stress = False
        self.compiled_outputs: Optional[CompiledOutputs] = None
        # the parent's references (NUM_ELEMENTS,) eV of a fine-tune, for data.element_energies keep
        self.kept_element_energies: Optional[torch.Tensor] = None
        # role (path, or train/valid/test) -> (file, start, stop): where each file's structures
        # lie in the list load() returns
        self.files: Dict[str, Tuple[str, int, int]] = {}

    def load(self) -> List[AtomicGraph]:
        """One graph per structure, built as the model's graph spec says (``data.cutoff``/
        ``data.max_neighbors`` override it): those of ``data.path`` in file order, or of the
        separate files ``data.train``, ``data.valid`` and ``data.test`` one after the other (each
        in file order; :attr:`files` says where each file's structures lie).

        Raises:
            ValueError: a ``data.train``/``valid``/``test`` file that does not exist or holds no
                structures; a ``data.element_energies`` mapping without an element of the data.
        """
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
        roles = [(name, getattr(data, name)) for name in ("train", "valid", "test") if getattr(data, name)]
        samples: List[AtomicGraph] = []
        self.files = {}
        for role, path in roles or [("path", data.path)]:
            if role != "path" and not Path(path).exists():
                raise ValueError(f"config key data.{role}: {path} does not exist")
            graphs = load_training_graphs(replace(data, path=path), spec, self.dtype, required)
            if not graphs:
                raise ValueError(f"config key data.{role}: {path} holds no structures")
            self.files[role] = (str(path), len(samples), len(samples) + len(graphs))
            samples += graphs
        if not isinstance(data.element_energies, str) and samples[0].energy is not None:
            reference_energies(data.element_energies, samples)  # every element of every file is named
        return samples

    def fit(self, train: Sequence[AtomicGraph]) -> Dict[str, Any]:
        """Fit the training statistics and give them to the model's heads; returns them."""
        config = self.config
        choice = config.data.element_energies
        if choice == "keep":
            if self.kept_element_energies is None:
                raise ValueError("data.element_energies keep: the parent checkpoint has no energy head")
            choice = self.kept_element_energies
        self.statistics = fit_statistics(train, config.data.property_keys, choice)
        head = energy_head(self.model)
        if head is not None:
            if self.statistics["element_energies"] is None:
                raise ValueError(f"model {config.model.name!r} predicts energies but {self._source()} has no "
                                 f"energy labels under data.energy_key={config.data.energy_key!r}")
            head.to(dtype=self.dtype)  # the references in the run's precision (float64: exactly as fitted or given)
            head.set_statistics(self.statistics["element_energies"], self.statistics["energy_scale"])
        self._standardise_property_heads()
        if head is None and not any(weight > 0 for weight in config.loss.properties.values()):
            raise ValueError(f"model {config.model.name!r} has no energy head: set loss.properties, the labels "
                             f"to train it on (its outputs: see data.prediction_keys)")
        first = train[0]
        self.use_forces = first.forces is not None and config.loss.forces > 0
        self.use_stress = first.stress is not None and config.loss.stress > 0 and bool(first.pbc.any())
        self.model.domain = ModelDomain.from_graphs(train, self._trained_labels(head is not None), self._source())
        return self.statistics

    def _source(self) -> str:
        """The file the training structures come from (``data.path`` or ``data.train``)."""
        return str(self.config.data.path or self.config.data.train or "")

    def domain(self) -> Dict[str, Any]:
        """The model's domain (:class:`~sciml.models.domain.ModelDomain`, as saved in
        checkpoints), known after :meth:`fit`."""
        return self.model.domain.to_dict()

    def _trained_labels(self, energy_model: bool) -> Dict[str, str]:
        """Label name -> unit of what the loss trains on."""
        config = self.config
        labels = {}
        if energy_model and config.loss.energy > 0:
            labels["energy"] = LABEL_UNITS["energy"]
        if self.use_forces:
            labels["forces"] = LABEL_UNITS["forces"]
        if self.use_stress:
            labels["stress"] = LABEL_UNITS["stress"]
        for key, weight in config.loss.properties.items():
            if weight > 0:
                labels[key] = config.data.property_units.get(key, PROPERTY_UNITS.get(key, ""))
        return labels

    @staticmethod
    def sizes(train: Sequence[AtomicGraph]) -> List[int]:
        """Atoms per structure: batches and ranks are balanced by them."""
        return [int(g.num_nodes) for g in train]

    @staticmethod
    def collate(items: Sequence[AtomicGraph]) -> AtomicGraph:
        return AtomicGraph.collate(list(items))

    def outputs(self, batch: AtomicGraph) -> Dict[str, torch.Tensor]:
        if self.compiled_outputs is not None:
            return self.compiled_outputs(batch)
        return model_outputs(self.model, batch, self.use_forces, self.use_stress)

    def compile(self, backend: str) -> None:
        """Compile the training forward pass (call after :meth:`fit`). A loss on forces or stress
        differentiates the outputs, so they are compiled with their derivatives
        (:class:`~sciml.train.compile.CompiledOutputs`; validation stays eager); otherwise the
        model's forward is compiled."""
        if self.use_forces or self.use_stress:
            if self.config.activation_checkpointing:
                # the recomputation inside the traced force graph gives wrong gradients (measured)
                raise ValueError("config keys compile and activation_checkpointing cannot be combined when the "
                                 "loss trains on forces or stress; set one of them to false")
            self.compiled_outputs = CompiledOutputs(self.model, self.use_forces, self.use_stress, backend)
        else:
            compile_model(self.model, backend)

    def _standardise_property_heads(self) -> None:
        """Give each named :class:`PropertyHead` its label's training mean and standard deviation,
        so the model learns the standardised label (ComFormer's label normalisation)."""
        outputs = {self.config.data.prediction_keys.get(k, k): k for k in self.config.data.property_keys}
        for module in self.model.modules():
            if isinstance(module, PropertyHead) and module.name in outputs:
                label = outputs[module.name]
                module.set_statistics(self.statistics["property_mean"][label], self.statistics["property_std"][label])

    def loss(self, batch: AtomicGraph, out: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of one term per target, each comparing errors made dimensionless by a
        training-set scale with the target's function (``loss.function``/``loss.functions``: mse,
        mae, huber, or OC20's MAE / L2-MAE; see :class:`~sciml.train.config.LossConfig`).

        Energy per atom (total energy for OC20) is divided by the energy head's scale, forces and stress by the RMS of
        their labels, each property by its standard deviation (see :func:`fit_statistics`); the
        Huber delta, in the label's unit, by the same scale. A term
        is used when its weight is positive, the batch carries its label and the model predicts it
        (properties: the model must predict them, under ``data.prediction_keys`` names).
        """
        weights, stats = self.config.loss, self.statistics
        total = torch.zeros((), device=batch.positions.device, dtype=batch.positions.dtype)
        if weights.energy > 0 and batch.energy is not None and "energy" in out:
            scale = stats["energy_scale"]
            error = out["energy"] - batch.energy
            if self._function("energy") == "oc20":
                term = (error / scale).abs().mean()
            else:
                term = self._term("energy", error / batch.num_atoms_per_graph.to(error.dtype), scale)
            total = total + weights.energy * term
        if weights.forces > 0 and batch.forces is not None and "forces" in out:
            error = out["forces"] - batch.forces
            if weights.free_atoms_only and "fixed" in batch.atom_properties:
                error = error[~batch.atom_properties["fixed"].bool()]
            if error.shape[0]:  # a batch of fixed atoms only has no force term
                if self._function("forces") == "oc20":
                    term = (error / stats["forces_rms"]).norm(dim=1).mean()
                else:
                    term = self._term("forces", error, stats["forces_rms"])
                total = total + weights.forces * term
        if weights.stress > 0 and batch.stress is not None and "stress" in out:
            total = total + weights.stress * self._term("stress", out["stress"] - batch.stress, stats["stress_rms"])
        for key, weight in weights.properties.items():
            predicted = self.config.data.prediction_keys.get(key, key)
            if predicted not in out:
                raise ValueError(f"loss.properties has {key!r} but model {self.config.model.name!r} does not predict "
                                 f"{predicted!r} (it predicts {sorted(out)}; map labels with data.prediction_keys)")
            target = batch.properties.get(key, batch.atom_properties.get(key))
            error = out[predicted].reshape(target.shape) - target
            total = total + weight * self._term(key, error, stats["property_std"][key])
        return total

    def _function(self, target: str) -> str:
        """The loss function of ``target``: ``loss.functions`` or else ``loss.function``."""
        loss = self.config.loss
        return loss.functions.get(target, loss.function)

    def _term(self, target: str, error: torch.Tensor, scale: float) -> torch.Tensor:
        """The loss term of ``target`` from its errors (label units) and training-set ``scale``
        (same unit): :func:`penalty` of ``error / scale`` (OC20: mse for stress and properties)."""
        function = self._function(target)
        delta = self.config.loss.huber_delta
        delta = delta.get(target, 1.0) if isinstance(delta, dict) else delta
        return penalty(error / scale, "mse" if function == "oc20" else function, delta / scale)

    def evaluate(self, items: Sequence[AtomicGraph], batch_size: int, device, with_loss: bool,
                 context: Optional[DistributedContext] = None) -> Dict[str, float]:
        """Metrics of :func:`~sciml.train.evaluation.evaluate` (with ``loss`` if asked). With a
        data-parallel ``context`` each rank evaluates every ``world_size``-th structure and the
        error sums are combined, so every rank returns the metrics of the whole set."""
        loss_fn = self.loss if with_loss else None
        keys = self.config.data.prediction_keys
        if context is None or not context.enabled or len(items) < context.world_size:
            return evaluate(self.model, items, batch_size, device, loss_fn, keys)
        shard = list(items)[context.rank::context.world_size]
        sums: Dict[str, float] = {}
        counts: Dict[str, int] = {}
        for part_sums, part_counts in context.all_gather(error_sums(self.model, shard, batch_size, device, loss_fn, keys)):
            for name, total in part_sums.items():
                sums[name] = sums.get(name, 0.0) + total
                counts[name] = counts.get(name, 0) + part_counts[name]
        return metrics_from_sums(sums, counts, len(items))

    @staticmethod
    def baselines(train: Sequence[AtomicGraph], test: Sequence[AtomicGraph]) -> Dict[str, float]:
        return mean_baseline_metrics(train, test)


def penalty(error: torch.Tensor, function: str, delta: float = 1.0) -> torch.Tensor:
    """The mean over all elements of ``error`` (dimensionless) of the loss ``function``:
    ``mse`` error^2, ``mae`` |error|, ``huber`` 0.5 error^2 where |error| < ``delta``, else
    delta (|error| - 0.5 delta) (``torch.nn.functional.huber_loss``)."""
    if function == "mse":
        return error.square().mean()
    if function == "mae":
        return error.abs().mean()
    if function == "huber":
        return F.huber_loss(error, torch.zeros_like(error), delta=delta)
    raise ValueError(f"unknown loss function {function!r}; use mse, mae or huber")


def load_training_graphs(data: DataConfig, spec: GraphSpec, dtype: torch.dtype = torch.float32,
                         required: Sequence[str] = ()) -> List[AtomicGraph]:
    """The graphs of ``data`` (one per structure, in file order), built as ``spec`` says.

    The reader is the registered format ``data.format`` (:mod:`sciml.data.formats`), or the one
    detected from ``data.path`` (else ase): OC20 sources, crystal datasets (formats of kind
    ``crystals``: the one label of ``data.property_keys`` is read, entries without it are
    dropped) and structure files (``structures``: ase and plugin formats). ``required`` names
    labels (energy, forces) every structure must carry.
    """
    entry = training_format(data)
    if entry.kind == OC20:
        return _oc20_graphs(data, entry.name, required, spec, dtype)
    if entry.kind == CRYSTALS:
        if len(data.property_keys) != 1:
            raise ValueError(f"data.format {entry.name} reads one target: set data.property_keys to [<target>], "
                             f"got {data.property_keys}")
        options = {"targets_path": data.targets_path} if data.targets_path else {}
        frames = read_crystal_dataset(data.path, entry.name, data.property_keys[0], **options)
        return load_graph_dataset(frames, spec, None, None, None, None, data.property_keys, dtype=dtype)
    if entry.kind != STRUCTURES:
        raise ValueError(f"data.format {entry.name} holds {entry.kind}, not atomic structures")
    frames = entry.read(data.path)
    keys = (data.energy_key, data.forces_key, data.stress_key)
    check_structures(frames, str(Path(data.path)), *keys, data.property_keys, required)
    return load_graph_dataset(frames, spec, None, *keys, data.property_keys, dtype=dtype)


def training_format(data: DataConfig) -> DataFormat:
    """The format ``data`` is read in: ``data.format``, else the format detected from ``data.path``
    (:func:`~sciml.data.formats.detect_format`), else the default (ase).

    Raises:
        ValueError: an unknown ``data.format``; without one, a ``data.path`` that does not exist.
    """
    if data.format is not None:
        return get_format(data.format)
    path = Path(data.path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    return detect_format(path) or get_format(DEFAULT_FORMAT)


def _oc20_graphs(data, format: str, required: Sequence[str], spec: GraphSpec,
                 dtype: torch.dtype) -> List[AtomicGraph]:
    """Graphs of an OC20 source in ``format``, with the labels the config asks for (see
    ``DataConfig.format``)."""
    graphs = load_graphs(data.path, spec, dtype=dtype, format=format)
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

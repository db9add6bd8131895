"""Batched prediction, error metrics and the trivial baselines they are compared with.

Metric names carry their units: energies in meV (total or per atom), forces in meV/Å (MAE and
RMSE over Cartesian components), stress in meV/Å^3, properties in the units of the data file.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

from sciml.graph.atomic_graph import AtomicGraph
from sciml.inference import predict_batches
from sciml.models.heads import element_counts, fit_element_energies

_MEV = 1000.0

LossFn = Callable[[AtomicGraph, Dict[str, torch.Tensor]], torch.Tensor]


def evaluate(
    model: torch.nn.Module,
    graphs: Sequence[AtomicGraph],
    batch_size: int = 32,
    device: "str | torch.device | None" = None,
    loss_fn: Optional[LossFn] = None,
    prediction_keys: Optional[Mapping[str, str]] = None,
) -> Dict[str, float]:
    """Errors of ``model`` against the labels the graphs carry.

    Returns ``num_structures`` and, for each label present: ``energy_mae_meV``,
    ``energy_mae_meV_per_atom``, ``energy_rmse_meV_per_atom``, ``forces_mae_meV_per_A``,
    ``forces_rmse_meV_per_A``, ``stress_mae_meV_per_A3``, and ``<property>_mae`` and
    ``<property>_mse`` (over components) for every property the model predicts, under the
    property's name or the output name ``prediction_keys[property]``; with ``loss_fn``
    (batch, outputs) -> scalar also ``loss``, the structure-weighted mean over batches.
    """
    if len(graphs) == 0:
        raise ValueError("cannot evaluate on an empty set of structures")
    sums, counts = error_sums(model, graphs, batch_size, device, loss_fn, prediction_keys)
    return metrics_from_sums(sums, counts, len(graphs))


def error_sums(
    model: torch.nn.Module,
    graphs: Sequence[AtomicGraph],
    batch_size: int = 32,
    device: "str | torch.device | None" = None,
    loss_fn: Optional[LossFn] = None,
    prediction_keys: Optional[Mapping[str, str]] = None,
) -> Tuple[Dict[str, float], Dict[str, int]]:
    """The sums and counts behind :func:`evaluate`'s metrics, by metric name: sums over parts of
    a set (e.g. the shards of data-parallel ranks) add up to the set's, and
    :func:`metrics_from_sums` turns them into the metrics."""
    sums: Dict[str, float] = {}
    counts: Dict[str, int] = {}
    if len(graphs) == 0:
        return sums, counts
    first = graphs[0]
    keys = sorted(first.properties) + sorted(first.atom_properties)
    prediction_keys = dict(prediction_keys or {})

    def add(name: str, total: torch.Tensor, count: int) -> None:
        sums[name] = sums.get(name, 0.0) + float(total)
        counts[name] = counts.get(name, 0) + count

    for batch, out in predict_batches(model, graphs, batch_size, device, compute_forces=first.forces is not None,
                                       compute_stress=first.stress is not None):
        structures = batch.num_graphs
        if loss_fn is not None:
            add("loss", loss_fn(batch, out) * structures, structures)
        if batch.energy is not None:
            error = (out["energy"] - batch.energy).double()
            per_atom = error / batch.num_atoms_per_graph
            add("energy_mae_meV", error.abs().sum() * _MEV, structures)
            add("energy_mae_meV_per_atom", per_atom.abs().sum() * _MEV, structures)
            add("energy_mse_per_atom", per_atom.pow(2).sum() * _MEV**2, structures)
        if batch.forces is not None:
            error = (out["forces"] - batch.forces).double()
            add("forces_mae_meV_per_A", error.abs().sum() * _MEV, error.numel())
            add("forces_mse", error.pow(2).sum() * _MEV**2, error.numel())
        if batch.stress is not None and "stress" in out:
            error = (out["stress"] - batch.stress).double()
            add("stress_mae_meV_per_A3", error.abs().sum() * _MEV, error.numel())
        for key in keys:
            target = batch.properties.get(key, batch.atom_properties.get(key))
            predicted = prediction_keys.get(key, key)
            if predicted in out:
                error = (out[predicted].reshape(target.shape) - target).double()
                add(f"{key}_mae", error.abs().sum(), error.numel())
                add(f"{key}_mse", error.pow(2).sum(), error.numel())
    return sums, counts


def metrics_from_sums(sums: Mapping[str, float], counts: Mapping[str, int], num_structures: int) -> Dict[str, float]:
    """:func:`evaluate`'s metrics from :func:`error_sums` of ``num_structures`` structures."""
    metrics = {"num_structures": float(num_structures)}
    for name, total in sums.items():
        mean = total / counts[name]
        if name == "energy_mse_per_atom":
            metrics["energy_rmse_meV_per_atom"] = mean**0.5
        elif name == "forces_mse":
            metrics["forces_rmse_meV_per_A"] = mean**0.5
        else:
            metrics[name] = mean
    return metrics


def mean_baseline_metrics(
    train_graphs: Sequence[AtomicGraph], test_graphs: Sequence[AtomicGraph]
) -> Dict[str, float]:
    """Errors on ``test_graphs`` of label-free predictors fitted on ``train_graphs``.

    ``reference_energy_*``: energy = sum of per-element reference energies (least squares on the
    training set); ``mean_energy_*``: energy = atom count x mean training energy per atom;
    ``zero_forces_mae_meV_per_A``: forces predicted as zero; ``mean_<property>_mae``: every
    per-structure property predicted as its training mean (the property's units). Same units as
    :func:`evaluate`.
    """
    metrics: Dict[str, float] = {}
    if train_graphs[0].energy is not None and test_graphs[0].energy is not None:
        train_energy = torch.cat([g.energy for g in train_graphs]).double().cpu()
        test_energy = torch.cat([g.energy for g in test_graphs]).double().cpu()
        train_counts, test_counts = element_counts(train_graphs), element_counts(test_graphs)
        atoms = test_counts.sum(dim=1)
        reference, _ = fit_element_energies(train_counts, train_energy)
        mean_per_atom = (train_energy / train_counts.sum(dim=1)).mean()
        for name, prediction in (("reference", test_counts @ reference.double()), ("mean", atoms * mean_per_atom)):
            error = (prediction - test_energy).abs()
            metrics[f"{name}_energy_mae_meV"] = float(error.mean()) * _MEV
            metrics[f"{name}_energy_mae_meV_per_atom"] = float((error / atoms).mean()) * _MEV
    if test_graphs[0].forces is not None:
        forces = torch.cat([g.forces for g in test_graphs]).double()
        metrics["zero_forces_mae_meV_per_A"] = float(forces.abs().mean()) * _MEV
    for key in test_graphs[0].properties:
        if key in train_graphs[0].properties and test_graphs[0].properties[key].is_floating_point():
            mean = torch.cat([g.properties[key] for g in train_graphs]).double().mean(0)
            test = torch.cat([g.properties[key] for g in test_graphs]).double()
            metrics[f"mean_{key}_mae"] = float((test - mean).abs().mean())
    return metrics


def format_metrics(metrics: Dict[str, float], title: str = "") -> str:
    """An aligned two-column text table of metrics, one per line, with an optional title."""
    width = max((len(name) for name in metrics), default=0)
    lines = [title] if title else []
    for name, value in metrics.items():
        text = str(int(value)) if name.startswith("num_") or name == "epoch" else f"{value:.4g}"
        lines.append(f"  {name:<{width}}  {text}")
    return "\n".join(lines)

"""The OC20 tasks with a trained model: S2EF evaluation and IS2RE/IS2RS by relaxation.

- S2EF: energies and forces of every structure, scored with fairchem's metrics (energy MAE,
  force MAE, force cosine, EwT, EFwT; force metrics over free atoms), see
  :mod:`sciml.tasks.oc20_metrics`.
- IS2RE: each initial structure is relaxed with the model as an ASE calculator, its fixed atoms
  held by ``FixAtoms`` (OC20's defaults: L-BFGS with max step 0.04 Å, memory 50, damping 1,
  alpha 70; fmax 0.05 eV/Å; at most 200 steps). The energy at the last step is the prediction of
  the relaxed energy (energy MAE, EwT); with DFT relaxed positions, ADwT scores the structures
  (fairchem's ``average_distance_within_threshold``: the fraction of thresholds 0.01..0.5 Å at
  which a structure's mean minimum-image atom displacement lies below the threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import ase.optimize
import numpy as np
import torch
from ase.constraints import FixAtoms
from ase.geometry import find_mic

from sciml.calculator import SciMLCalculator
from sciml.graph import AtomicGraph
from sciml.inference import model_dtype, predict_batches
from sciml.tasks.oc20_metrics import OC20Metrics

# ase optimizer class and options per name; L-BFGS with OC20's settings.
_OPTIMIZERS = {"lbfgs": ("LBFGS", dict(maxstep=0.04, memory=50, damping=1.0, alpha=70.0)),
               "bfgs": ("BFGS", {}), "fire": ("FIRE", {})}
OPTIMIZERS = tuple(_OPTIMIZERS)
ADWT_THRESHOLDS = np.arange(0.01, 0.5, 0.001)  # Å, as fairchem's evaluator


def evaluate_s2ef(model: torch.nn.Module, graphs: Sequence[AtomicGraph], batch_size: int = 8,
                  device: Optional[str] = None) -> Dict[str, float]:
    """OC20 S2EF metrics of ``model`` on labelled graphs (energies eV, forces eV/Å; ``fixed``
    atoms, from ``atom_properties``, are left out of the force metrics)."""
    if graphs and (graphs[0].energy is None or graphs[0].forces is None):
        raise ValueError("S2EF evaluation needs structures labelled with energies and forces")
    metrics = OC20Metrics()
    for batch, out in predict_batches(model, graphs, batch_size, device, compute_forces=True, compute_stress=False):
        fixed = batch.atom_properties.get("fixed")
        metrics.update(out["energy"], batch.energy, out["forces"], batch.forces, batch.num_atoms_per_graph, fixed)
    return metrics.compute()


@dataclass
class Relaxation:
    """One ML relaxation: the predicted relaxed energy (eV) and positions (N, 3) Å, steps taken
    and whether max |F| on free atoms fell below fmax."""

    energy: float
    positions: np.ndarray
    steps: int
    converged: bool


def relax_structures(model: torch.nn.Module, graphs: Sequence[AtomicGraph], fmax: float = 0.05, steps: int = 200,
                     optimizer: str = "lbfgs", device: str = "cpu") -> List[Relaxation]:
    """Relax each structure (its ``fixed`` atoms held in place) with ``model`` as calculator."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    calculator = SciMLCalculator(model, device=device, dtype=model_dtype(model))
    results = []
    for graph in graphs:
        atoms = graph.to_ase()[0]
        fixed = graph.atom_properties.get("fixed")
        if fixed is not None and bool(fixed.any()):
            atoms.set_constraint(FixAtoms(mask=fixed.bool().cpu().numpy()))
        atoms.calc = calculator
        name, options = _OPTIMIZERS[optimizer]
        runner = getattr(ase.optimize, name)(atoms, logfile=None, **options)
        converged = bool(runner.run(fmax=fmax, steps=steps))
        results.append(Relaxation(float(atoms.get_potential_energy()), atoms.get_positions(), runner.nsteps, converged))
    return results


def average_distance_within_threshold(predicted: Sequence[np.ndarray], graphs: Sequence[AtomicGraph]) -> float:
    """ADwT of predicted relaxed positions against each graph's ``relaxed_positions`` (fraction)."""
    means = []
    for positions, graph in zip(predicted, graphs):
        target = graph.atom_properties["relaxed_positions"].detach().cpu().double().numpy()
        vectors, _ = find_mic(np.asarray(positions) - target, graph.cell[0].detach().cpu().double().numpy(),
                              graph.pbc[0].cpu().numpy())
        means.append(np.linalg.norm(vectors, axis=1).mean())
    means = np.asarray(means)
    return float((means[:, None] < ADWT_THRESHOLDS[None, :]).mean())


def evaluate_is2re(model: torch.nn.Module, graphs: Sequence[AtomicGraph], fmax: float = 0.05, steps: int = 200,
                   optimizer: str = "lbfgs", device: str = "cpu", energy_key: str = "relaxed_energy") -> Dict[str, float]:
    """IS2RE (and, with relaxed positions, IS2RS) metrics of relaxations from the initial graphs.

    The target is each graph's ``properties[energy_key]`` (eV; OC20's ``y_relaxed``). Returns
    ``energy_mae``, ``energy_mse``, ``energy_within_threshold``, ``converged`` (fraction),
    ``mean_steps`` and, when ``relaxed_positions`` are present, ``average_distance_within_threshold``.
    """
    missing = [k for k, g in enumerate(graphs) if energy_key not in g.properties]
    if missing:
        raise ValueError(f"structure {missing[0]} has no {energy_key!r} label for IS2RE evaluation")
    relaxations = relax_structures(model, graphs, fmax, steps, optimizer, device)
    metrics = OC20Metrics()
    predicted = torch.tensor([r.energy for r in relaxations], dtype=torch.float64)
    metrics.update(predicted, torch.stack([g.properties[energy_key].reshape(()).double() for g in graphs]))
    result = metrics.compute()
    result["converged"] = float(np.mean([r.converged for r in relaxations]))
    result["mean_steps"] = float(np.mean([r.steps for r in relaxations]))
    if all("relaxed_positions" in g.atom_properties for g in graphs):
        result["average_distance_within_threshold"] = average_distance_within_threshold(
            [r.positions for r in relaxations], graphs)
    return result

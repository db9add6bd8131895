"""Energy/force/stress consistency by central finite differences (conservative models)."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch

from sciml.graph import AtomicGraph, GraphSpec


def check_conservative(
    model: Callable,
    atoms,
    step: float = 1e-4,
    components: int = 6,
    build_graph: Optional[Callable] = None,
    seed: int = 0,
) -> Dict[str, float]:
    """Max |autograd - finite difference| for random force components and, if periodic, stress.

    forces = -dE/dx (eV/Å), stress = (1/V) dE/d(strain) (eV/Å^3), differences taken with a central
    step of ``step`` Å (positions) or ``step`` (strain). Run the model in float64 for a clean check.
    Returns ``{"forces": err, "stress": err}`` (stress only for periodic structures).
    """
    rng = np.random.default_rng(seed)
    periodic = bool(np.any(atoms.pbc))
    if build_graph is None:

        def build_graph(a):
            return AtomicGraph.from_ase(a, GraphSpec.of(model), dtype=torch.float64)

    def energy(a) -> float:
        return float(model(build_graph(a), compute_forces=False, compute_stress=False)["energy"].detach().sum())

    out = model(build_graph(atoms), compute_forces=True, compute_stress=periodic)
    forces = out["forces"].detach().double().numpy()
    errors = {"forces": 0.0}
    for _ in range(components):
        atom, axis = int(rng.integers(len(atoms))), int(rng.integers(3))
        shifted = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * step
            shifted.append(energy(moved))
        numeric = -(shifted[0] - shifted[1]) / (2 * step)
        errors["forces"] = max(errors["forces"], abs(numeric - forces[atom, axis]))
    if periodic:
        stress = out["stress"][0].detach().double().numpy()
        errors["stress"] = 0.0
        for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
            strain = np.zeros((3, 3))
            strain[a, b] += step / 2
            strain[b, a] += step / 2
            shifted = []
            for sign in (1, -1):
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
                shifted.append(energy(strained))
            numeric = (shifted[0] - shifted[1]) / (2 * step) / atoms.get_volume()
            errors["stress"] = max(errors["stress"], abs(numeric - stress[a, b]))
    return errors

"""Edge geometry that stays differentiable in positions and in a strain tensor.

Forces and stress come from one backward pass: ``forces = -dE/dpositions`` and
``stress = (1/V) dE/dstrain`` at zero strain (ase's sign convention), where the strain ``eps``
(B, 3, 3) is symmetric and deforms atoms and cell alike as ``x -> x (I + eps)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sciml.graph.atomic_graph import AtomicGraph


@dataclass
class EdgeGeometry:
    """Differentiable geometry of a graph's edges.

    Attributes:
        positions: (N, 3) Å, the (possibly strained) positions the edges were computed from; a
            leaf requiring grad when forces were requested.
        cell: (B, 3, 3) Å, the (possibly strained) cell.
        vectors: (E, 3) Å, ``positions[j] - positions[i] + shift @ cell`` (from centre i to
            neighbour j).
        lengths: (E,) Å.
        strain: (B, 3, 3) the zero strain to differentiate for stress, or None.
    """

    positions: torch.Tensor
    cell: torch.Tensor
    vectors: torch.Tensor
    lengths: torch.Tensor
    strain: Optional[torch.Tensor] = None


def apply_strain(
    positions: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor, strain: torch.Tensor
) -> "tuple[torch.Tensor, torch.Tensor]":
    """Positions (N, 3) Å and cell (B, 3, 3) Å deformed as ``x -> x (I + eps)`` with eps the
    symmetric part of ``strain`` (B, 3, 3); ``batch`` (N,) gives each atom's structure."""
    symmetric = 0.5 * (strain + strain.transpose(1, 2))
    deformation = torch.eye(3, dtype=cell.dtype, device=cell.device) + symmetric
    return torch.einsum("ni,nij->nj", positions, deformation[batch]), torch.bmm(cell, deformation)


def edge_geometry(graph: AtomicGraph, forces: bool = False, stress: bool = False) -> EdgeGeometry:
    """Edge vectors and lengths of ``graph``, prepared for autograd forces and stress.

    With ``forces`` the positions become a fresh leaf that requires grad; with ``stress`` a zero
    symmetric strain (B, 3, 3) is introduced so that ``dE/dstrain / volume`` is the stress.
    """
    positions = graph.positions
    cell = graph.cell
    strain = None
    if forces or stress:
        positions = positions.detach().requires_grad_(True)
    positions_used = positions
    if stress:
        strain = torch.zeros_like(cell, requires_grad=True)
        positions_used, cell = apply_strain(positions, cell, graph.batch, strain)
    i, j = graph.edge_index
    shift = torch.einsum("ei,eij->ej", graph.cell_shifts.to(cell.dtype), cell[graph.batch[i]])
    vectors = positions_used[j] - positions_used[i] + shift
    lengths = torch.linalg.norm(vectors, dim=-1)
    return EdgeGeometry(positions=positions, cell=cell, vectors=vectors, lengths=lengths, strain=strain)


def forces_and_stress(
    energy: torch.Tensor, geometry: EdgeGeometry, graph: AtomicGraph, training: bool = False
) -> "tuple[torch.Tensor, Optional[torch.Tensor]]":
    """Forces (N, 3) eV/Å = -dE/dx and, if a strain was introduced, stress (B, 3, 3) eV/Å^3.

    Stress is ``dE/dstrain / volume`` for structures periodic in some direction and 0 for the
    others (:func:`stress_from_virial`). ``training`` keeps the graph of the gradient so force and
    stress losses can be backpropagated.
    """
    inputs = [geometry.positions] + ([geometry.strain] if geometry.strain is not None else [])
    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training, allow_unused=True)
    forces = -grads[0] if grads[0] is not None else torch.zeros_like(geometry.positions)
    stress = None
    if geometry.strain is not None:
        virial = -grads[1] if grads[1] is not None else torch.zeros_like(geometry.strain)
        stress = stress_from_virial(virial, graph.cell, graph.pbc)
    return forces, stress


def stress_from_virial(virial: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Stress (B, 3, 3) eV/Å^3 = -virial / volume (ase's sign) from the virial -dE/dstrain (B, 3, 3)
    eV, the cells (B, 3, 3) Å and pbc (B, 3); 0 for structures without a periodic direction (a
    molecule has no volume). Chosen per structure on the device, without reading ``pbc`` back."""
    periodic = pbc.any(dim=1).view(-1, 1, 1)
    volume = torch.linalg.det(cell).abs().view(-1, 1, 1)
    return torch.where(periodic, -virial / torch.where(periodic, volume, 1.0), 0.0)

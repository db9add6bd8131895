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
    if stress:
        strain = torch.zeros_like(cell, requires_grad=True)
        symmetric = 0.5 * (strain + strain.transpose(1, 2))
        deformation = torch.eye(3, dtype=cell.dtype, device=cell.device) + symmetric
        positions_used = torch.einsum("ni,nij->nj", positions, deformation[graph.batch])
        cell = torch.bmm(cell, deformation)
    else:
        positions_used = positions
    i, j = graph.edge_index
    shift = torch.einsum("ei,eij->ej", graph.cell_shifts.to(cell.dtype), cell[graph.batch[i]])
    vectors = positions_used[j] - positions_used[i] + shift
    lengths = torch.linalg.norm(vectors, dim=-1)
    return EdgeGeometry(positions=positions, cell=cell, vectors=vectors, lengths=lengths, strain=strain)


def forces_and_stress(
    energy: torch.Tensor, geometry: EdgeGeometry, graph: AtomicGraph, training: bool = False
) -> "tuple[torch.Tensor, Optional[torch.Tensor]]":
    """Forces (N, 3) eV/Å = -dE/dx and, if a strain was introduced, stress (B, 3, 3) eV/Å^3.

    ``training`` keeps the graph of the gradient so force/stress losses can be backpropagated.
    """
    inputs = [geometry.positions] + ([geometry.strain] if geometry.strain is not None else [])
    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training, allow_unused=True)
    forces = -grads[0] if grads[0] is not None else torch.zeros_like(geometry.positions)
    stress = None
    if geometry.strain is not None:
        volume = torch.linalg.det(graph.cell).abs().view(-1, 1, 1)
        virial = grads[1] if grads[1] is not None else torch.zeros_like(geometry.strain)
        stress = virial / volume
    return forces, stress

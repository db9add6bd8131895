"""Output heads shared by all graph models: per-structure energy (with conservative forces and
stress) and pooled per-structure properties.

Heads are model-agnostic: they take per-atom outputs or features (N, ...) and the graph.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from sciml.graph import AtomicGraph, EdgeGeometry, forces_and_stress
from sciml.graph.validation import MAX_ATOMIC_NUMBER
from sciml.ops import scatter
from sciml.ops.tracing import is_tracing

NUM_ELEMENTS = MAX_ATOMIC_NUMBER + 1  # index 0 unused, so element_energies[Z] needs no offset


def check_embedded_elements(graph: AtomicGraph, num_elements: int, model: str, option: str = "num_elements") -> None:
    """ValueError naming the first atomic number of ``graph`` outside an element embedding of
    ``num_elements`` rows (atomic numbers 0 .. num_elements - 1; ``option`` names the model's
    option that sets it)."""
    numbers = graph.atomic_numbers
    if numbers.numel() and int(numbers.max()) >= num_elements:
        bad = int(numbers[numbers >= num_elements][0])
        raise ValueError(f"atomic number {bad} is beyond this {model}'s element embedding "
                         f"({option}={num_elements}: atomic numbers 1..{num_elements - 1})")


def structure_sums(values: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
    """(B,) sums of per-atom ``values`` (N,) over each structure of ``graph``.

    While traced (compile, export) it is a plain sum for one structure and a (B, N) one-hot
    product for several (B is small): inductor's CPU code generator fails on an index_add into a
    single row (torch 2.13), which a batch of one structure is, unless its size is known."""
    if is_tracing():
        if statically_known_true(graph.num_graphs == 1):
            return values.sum(0, keepdim=True)
        rows = torch.arange(graph.num_graphs, device=values.device).unsqueeze(1)
        return (rows == graph.batch.unsqueeze(0)).to(values.dtype) @ values
    return scatter(values, graph.batch, graph.num_graphs, "sum")


class EnergyHead(nn.Module):
    """Per-structure energy E_b = sum_{i in b} (scale * y_i + e[Z_i]), plus -dE/dx and stress.

    ``y_i`` is the model's dimensionless per-atom output, ``scale`` (eV) sets its magnitude and
    ``element_energies`` e (NUM_ELEMENTS,) eV are per-element reference energies, so an untrained
    model already predicts the composition baseline. Both are buffers set by :meth:`set_statistics`
    (see :func:`fit_element_energies`) and saved with the model.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("element_energies", torch.zeros(NUM_ELEMENTS))
        self.register_buffer("scale", torch.ones(()))

    def set_statistics(self, element_energies: torch.Tensor, scale: float) -> None:
        """Set per-element energies (NUM_ELEMENTS,) eV and the per-atom output scale in eV."""
        element_energies = torch.as_tensor(element_energies)
        if element_energies.shape != (NUM_ELEMENTS,):
            raise ValueError(f"element_energies must have shape ({NUM_ELEMENTS},), got {tuple(element_energies.shape)}")
        self.element_energies.copy_(element_energies)
        self.scale.fill_(float(scale))

    def forward(
        self,
        atomic_output: torch.Tensor,
        graph: AtomicGraph,
        geometry: Optional[EdgeGeometry] = None,
        training: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Energies from the per-atom output (N,); derivatives when ``geometry`` is given.

        Args:
            atomic_output: (N,) dimensionless per-atom output of a model.
            graph: the batch the output belongs to.
            geometry: the differentiable geometry the output was computed from; pass it only when
                forces (and, if it carries a strain, stress) are wanted.
            training: keep the derivative graph so force and stress losses can be backpropagated.

        Returns:
            ``energy`` (B,) eV, ``energies`` (N,) eV per atom and, with ``geometry``, ``forces``
            (N, 3) eV/Å = -dE/dx and, if the geometry has a strain, ``stress`` (B, 3, 3) eV/Å^3.
            Outside training, outputs that went through the backward pass are detached.
        """
        energies = self.scale * atomic_output + self.element_energies[graph.atomic_numbers]
        energy = structure_sums(energies, graph)
        out = {"energy": energy, "energies": energies}
        if geometry is not None:
            forces, stress = forces_and_stress(energy, geometry, graph, training)
            if not training:  # the backward pass has consumed the graph: nothing left to differentiate
                out = {"energy": energy.detach(), "energies": energies.detach()}
            out["forces"] = forces
            if stress is not None:
                out["stress"] = stress
        return out


class PropertyHead(nn.Module):
    """Per-structure invariant property (B, out_features) from per-atom features (N, in_features).

    An MLP (Linear-SiLU-Linear, ``hidden`` wide) maps each atom's features to ``out_features``
    components, which are pooled over each structure (``"sum"`` for extensive targets, ``"mean"``
    for intensive ones); with ``pool_before_mlp`` the features are pooled first and the MLP maps
    the pooled vector (CGCNN/ComFormer's readout). The result is de-standardised:
    y = out * std + mean, with target ``mean`` and ``std`` buffers (out_features,) in the target's
    units set by :meth:`set_statistics` (the trainer sets them from the training labels of the
    output ``name``). The components are invariants (several scalar targets, not a vector).
    """

    def __init__(self, in_features: int, out_features: int = 1, pooling: str = "mean", pool_before_mlp: bool = False,
                 hidden: Optional[int] = None, name: Optional[str] = None):
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling must be 'mean' or 'sum', got {pooling!r}")
        self.pooling = pooling
        self.pool_before_mlp = pool_before_mlp
        self.name = name
        hidden = in_features if hidden is None else hidden
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, out_features))
        self.register_buffer("mean", torch.zeros(out_features))
        self.register_buffer("std", torch.ones(out_features))

    def set_statistics(self, mean: Union[float, torch.Tensor], std: Union[float, torch.Tensor]) -> None:
        """Set the target mean and standard deviation, scalars or (out_features,)."""
        self.mean.copy_(torch.as_tensor(mean).expand_as(self.mean))
        self.std.copy_(torch.as_tensor(std).expand_as(self.std))

    def forward(self, features: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
        """(N, in_features) -> (B, out_features)."""
        if self.pool_before_mlp:
            out = self.mlp(scatter(features, graph.batch, graph.num_graphs, self.pooling))
        else:
            out = scatter(self.mlp(features), graph.batch, graph.num_graphs, self.pooling)
        return out * self.std + self.mean


def element_counts(graphs: Sequence[AtomicGraph]) -> torch.Tensor:
    """(B, NUM_ELEMENTS) float64 atom counts per element of every structure of ``graphs``."""
    rows = []
    for graph in graphs:
        flat = graph.batch.cpu() * NUM_ELEMENTS + graph.atomic_numbers.cpu()
        counts = torch.bincount(flat, minlength=graph.num_graphs * NUM_ELEMENTS)
        rows.append(counts.view(graph.num_graphs, NUM_ELEMENTS))
    return torch.cat(rows).to(torch.float64)


def fit_element_energies(
    structures: Union[torch.Tensor, Sequence[AtomicGraph]], energies: torch.Tensor
) -> Tuple[torch.Tensor, float]:
    """Least-squares per-element energies: E_b ~ sum_Z n_bZ e_Z.

    Args:
        structures: element counts (B, NUM_ELEMENTS), or graphs (each possibly a batch) whose
            structures, in order, match ``energies``.
        energies: (B,) eV.

    Returns:
        ``element_energies`` (NUM_ELEMENTS,) float64 eV (0 for elements absent from the data) and
        the RMS of the per-atom residual (E_b - sum_Z n_bZ e_Z) / n_b in eV/atom.
    """
    counts = structures.to(torch.float64) if isinstance(structures, torch.Tensor) else element_counts(structures)
    targets = torch.as_tensor(energies).detach().to(torch.float64).cpu().reshape(-1)
    counts = counts.cpu()
    if counts.ndim != 2 or counts.shape != (targets.shape[0], NUM_ELEMENTS):
        raise ValueError(
            f"element counts must have shape ({targets.shape[0]}, {NUM_ELEMENTS}), got {tuple(counts.shape)}"
        )
    present = counts.sum(0) > 0
    solution = torch.linalg.lstsq(counts[:, present], targets.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    element_energies = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)
    element_energies[present] = solution
    residual = (targets - counts @ element_energies) / counts.sum(1).clamp(min=1)
    return element_energies, float(residual.square().mean().sqrt()) if residual.numel() else 0.0


def energy_head(model: nn.Module) -> Optional[EnergyHead]:
    """The model's :class:`EnergyHead` (None for a model that predicts no energy); ValueError for
    a model with more than one, whose training statistics would be ambiguous."""
    heads = [m for m in model.modules() if isinstance(m, EnergyHead)]
    if len(heads) > 1:
        raise ValueError(f"the trainer needs a model with at most one EnergyHead, {type(model).__name__} has {len(heads)}")
    return heads[0] if heads else None

"""EGNN: E(n)-equivariant graph neural networks (Satorras, Hoogeboom, Welling, ICML 2021).

Edges come from the shared graph layer: for an edge (i, j) the centre i receives the message and
the edge vector is r_ij = x_j - x_i (+ periodic image shift) in Å, so the paper's x_i - x_j is
-r_ij. Periodic images work because every geometric quantity is computed from edge vectors, never
from raw positions. The paper connects all atoms of a molecule; to reproduce that, build graphs
with a cutoff larger than the molecule (e.g. ``AtomicGraph.from_tensors(..., cutoff=1e3)``) and
switch the envelope off (``envelope_exponent=None``).

Models: :class:`EGNNEnergyModel` (``build_model("egnn")``; ``preset="qm9"`` gives the paper's QM9
architecture) and :class:`EGNNDynamics` (``build_model("egnn_nbody")``, the velocity model of the
n-body experiment).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from sciml.graph import AtomicGraph, MessagePassing, PolynomialEnvelope, edge_counts
from sciml.models.contract import ENERGY_OUTPUTS, Model, ModelOptions, Output, register_model
from sciml.models.heads import NUM_ELEMENTS, EnergyHead, check_embedded_elements
from sciml.ops import scatter

def _mlp(in_features: int, hidden: int, out_features: int, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, out_features, bias=bias))


def neighbour_weight_inverse(
    edge_index: torch.Tensor, num_nodes: int, edge_weight: Optional[torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    """C_i = 1 / max(sum_j w_ij, 1), (N, 1): the mean's normaliser of the coordinate update."""
    if edge_weight is None:
        total = edge_counts(edge_index[0], num_nodes, dtype)
    else:
        total = scatter(edge_weight, edge_index[0], num_nodes, "sum")
    return total.clamp(min=1).reciprocal().unsqueeze(1)


class EGNNLayer(nn.Module):
    """One E(n)-equivariant graph convolution (the paper's E_GCL, or E_GCL_vel with ``velocity``).

    For an edge (i, j), r_ij = x_j - x_i (Å) and an optional edge weight w_ij (a cutoff envelope):

        m_ij = phi_e(h_i, h_j, |r_ij|^2, a_ij) [* sigmoid(Linear(m_ij))] * w_ij
        x_i <- x_i + C_i sum_j (x_i - x_j) phi_x(m_ij) w_ij  [+ phi_v(h_i) v_i]
        h_i <- h_i + phi_h(h_i, sum_j m_ij)

    with phi_e = Linear-SiLU-Linear-SiLU, phi_h and phi_v = Linear-SiLU-Linear and phi_x =
    Linear-SiLU-Linear(no bias, xavier gain 0.001) [tanh * coords_range]. C_i = 1 / max(sum_j
    w_ij, 1) is the mean over neighbours when all w_ij = 1 (the reference's aggregation); summing
    weights instead of counting neighbours keeps the update continuous when atoms cross a cutoff.
    ``normalize`` replaces x_i - x_j by (x_i - x_j) / (|x_i - x_j| + 1e-8); unlike the reference
    the norm is not detached, so energies stay conservative.

    Args:
        hidden: width H of node features and messages.
        edge_attr_dim: width of the extra edge attributes a_ij (0 for none).
        attention: gate messages by sigmoid(Linear(m_ij)).
        update_coords: compute the coordinate update (phi_x).
        velocity: add phi_v(h_i) v_i to the coordinate update.
        normalize, tanh, coords_range: stabilisers of the coordinate update (see above).
    """

    def __init__(
        self,
        hidden: int,
        edge_attr_dim: int = 0,
        attention: bool = False,
        update_coords: bool = False,
        velocity: bool = False,
        normalize: bool = False,
        tanh: bool = False,
        coords_range: float = 1.0,
    ):
        super().__init__()
        self.hidden = hidden
        self.normalize, self.tanh, self.coords_range = normalize, tanh, float(coords_range)
        # One Linear over [h_i, h_j, |r_ij|^2, a_ij] as in the reference (same parameters); the
        # forward pass applies its node blocks per atom, see forward().
        self.edge_in = nn.Linear(2 * hidden + 1 + edge_attr_dim, hidden)
        self.edge_out = nn.Linear(hidden, hidden)
        self.gate = nn.Linear(hidden, 1) if attention else None
        self.node_mlp = _mlp(2 * hidden, hidden, hidden)
        self.coord_mlp = _mlp(hidden, hidden, 1, bias=False) if update_coords else None
        if self.coord_mlp is not None:
            nn.init.xavier_uniform_(self.coord_mlp[2].weight, gain=0.001)
        self.velocity_mlp = _mlp(hidden, hidden, 1) if velocity else None

    def forward(
        self,
        h: torch.Tensor,
        vectors: torch.Tensor,
        edge_index: torch.Tensor,
        edge_attr: Optional[torch.Tensor] = None,
        edge_weight: Optional[torch.Tensor] = None,
        velocities: Optional[torch.Tensor] = None,
        inverse_count: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Update node features and (optionally) coordinates.

        Args:
            h: (N, H) node features.
            vectors: (E, 3) Å, current r_ij = x_j - x_i (+ image shift).
            edge_index: (2, E), rows (centre i, neighbour j).
            edge_attr: (E, edge_attr_dim) or None.
            edge_weight: (E,) envelope weights w_ij in [0, 1], or None for all ones.
            velocities: (N, 3), required when the layer was built with ``velocity``.
            inverse_count: (N, 1) C_i from :func:`neighbour_weight_inverse`, computed when None
                (pass it to share it between layers).

        Returns:
            New features (N, H) and the coordinate displacement (N, 3) Å, or None when the layer
            does not move coordinates.
        """
        centres, neighbours = edge_index
        num_nodes, width = h.shape
        radial = vectors.square().sum(-1, keepdim=True)
        weight = self.edge_in.weight
        # Linear([h_i, h_j, s_ij]) = (W_i h_i + b) + W_j h_j + W_s s_ij: the node blocks run on N
        # atoms and are gathered, instead of one (E, 2H) @ (2H, H) product over all edges.
        pre = F.linear(h, weight[:, :width], self.edge_in.bias).index_select(0, centres)
        pre = pre.add_(F.linear(h, weight[:, width : 2 * width]).index_select(0, neighbours))
        pre = pre.addcmul_(radial, weight[:, 2 * width].contiguous())  # strided operands are ~8x slower
        if edge_attr is not None:
            pre = pre.addmm_(edge_attr, weight[:, 2 * width + 1 :].t())
        messages = F.silu(self.edge_out(F.silu(pre)))
        gate = torch.sigmoid(self.gate(messages)) if self.gate is not None else None
        if edge_weight is not None:
            gate = edge_weight.unsqueeze(1) if gate is None else gate * edge_weight.unsqueeze(1)
        if gate is not None:
            messages = messages * gate

        displacement = None
        if self.coord_mlp is not None:
            coefficient = self.coord_mlp(messages)
            if self.tanh:
                coefficient = torch.tanh(coefficient) * self.coords_range
            if self.normalize:
                coefficient = coefficient / (radial.sqrt() + 1e-8)
            if edge_weight is not None:
                coefficient = coefficient * edge_weight.unsqueeze(1)
            if inverse_count is None:
                inverse_count = neighbour_weight_inverse(edge_index, num_nodes, edge_weight, h.dtype)
            # x_i - x_j = -r_ij
            displacement = scatter(vectors * -coefficient, centres, num_nodes, "sum") * inverse_count
        if self.velocity_mlp is not None:
            if velocities is None:
                raise ValueError("this EGNN layer needs velocities (N, 3)")
            moved = self.velocity_mlp(h) * velocities
            displacement = moved if displacement is None else displacement + moved

        aggregated = scatter(messages, centres, num_nodes, "sum")
        h = h + self.node_mlp(torch.cat([h, aggregated], dim=1))
        return h, displacement


def _moved_vectors(vectors: torch.Tensor, displacement: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """Edge vectors (E, 3) after moving atoms by ``displacement`` (N, 3); image shifts are kept."""
    return vectors + displacement.index_select(0, edge_index[1]) - displacement.index_select(0, edge_index[0])


@dataclass(frozen=True)
class _EGNNShared(ModelOptions):
    """Options both EGNN models share (see :class:`EGNNOptions`)."""

    hidden: int = 128
    layers: int = 4
    cutoff: Optional[float] = 5.0
    max_neighbors: Optional[int] = None
    attention: bool = True
    normalize: bool = False
    tanh: bool = False
    coords_range: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"hidden and layers must be positive, got hidden={self.hidden}, layers={self.layers}")
        if self.cutoff is not None and not self.cutoff > 0:
            raise ValueError(f"cutoff must be a positive distance in Å or None, got {self.cutoff!r}")
        if not self.coords_range > 0:
            raise ValueError(f"coords_range must be positive, got {self.coords_range!r}")


@dataclass(frozen=True)
class EGNNOptions(_EGNNShared):
    """Options of :class:`EGNNEnergyModel`.

    Attributes:
        hidden: feature width. layers: number of EGNN layers.
        cutoff: graph radius in Å (None: the caller builds the graph, no envelope).
        max_neighbors: passed to the graph builder with the cutoff.
        attention: gate messages by sigmoid(Linear(m_ij)).
        update_coords, normalize, tanh, coords_range: coordinate updates (see EGNNLayer).
        envelope_exponent: exponent p of the polynomial envelope, or None for no envelope.
        num_elements: size of the element embedding (atomic numbers 0..num_elements-1).
    """

    update_coords: bool = False
    envelope_exponent: Optional[int] = 5
    num_elements: int = NUM_ELEMENTS


@dataclass(frozen=True)
class EGNNDynamicsOptions(_EGNNShared):
    """Options of :class:`EGNNDynamics` (fields as :class:`EGNNOptions`); the defaults are the
    reference's n-body model: 64 features, 4 layers, no attention, all particles connected."""

    hidden: int = 64
    cutoff: Optional[float] = 1e3
    attention: bool = False


PRESETS: Dict[str, EGNNOptions] = {
    # main_qm9.py of the reference: 7 layers of 128 features with attention, coordinates never
    # updated (E(3)-invariant). The reference connects all atoms: pass a cutoff larger than the
    # molecule and envelope_exponent=None to match it.
    "qm9": EGNNOptions(hidden=128, layers=7, attention=True, update_coords=False),
}


@register_model("egnn", EGNNOptions, presets=PRESETS,
                small=EGNNOptions(hidden=16, layers=3, cutoff=4.0, update_coords=True))
class EGNNEnergyModel(MessagePassing, Model):
    """EGNN interatomic potential: energy (eV), conservative forces (eV/Å) and stress (eV/Å^3).

    Atoms are embedded by element, pass through ``layers`` :class:`EGNNLayer` s, and a per-atom
    MLP (Linear-SiLU-Linear) feeds an :class:`~sciml.models.heads.EnergyHead`. With a cutoff,
    messages are multiplied by a :class:`~sciml.graph.PolynomialEnvelope` of the edge length, so
    energy and forces stay smooth when atoms cross the cutoff (``envelope_exponent=None`` turns
    it off). By default coordinates are not updated (the invariant QM9 model of the paper); with
    ``update_coords`` each layer but the last moves them (the last layer's move could not affect
    the energy).

    Options: :class:`EGNNOptions`.
    """

    symmetry = "E(3)"
    outputs = ENERGY_OUTPUTS
    forces = "conservative"
    heads = ("readout", "head")

    def __init__(self, options: EGNNOptions = EGNNOptions()):
        super().__init__(cutoff=options.cutoff, max_neighbors=options.max_neighbors)
        self.options = o = options
        self.envelope = (
            PolynomialEnvelope(self.cutoff, o.envelope_exponent)
            if self.cutoff is not None and o.envelope_exponent is not None
            else None
        )
        self.num_elements = o.num_elements
        self.embedding = nn.Embedding(o.num_elements, o.hidden)
        self.layers = nn.ModuleList(
            EGNNLayer(o.hidden, attention=o.attention, update_coords=o.update_coords and n < o.layers - 1,
                      normalize=o.normalize, tanh=o.tanh, coords_range=o.coords_range)
            for n in range(o.layers)
        )  # fmt: skip
        self.readout = _mlp(o.hidden, o.hidden, 1)
        self.head = EnergyHead()

    def check_elements(self, graph: AtomicGraph) -> None:
        """Raise ValueError for atomic numbers outside the element embedding."""
        check_embedded_elements(graph, self.num_elements, "EGNN")

    def forward(
        self, graph: AtomicGraph, compute_forces: bool = True, compute_stress: bool = False
    ) -> Dict[str, torch.Tensor]:
        """Energy ``energy`` (B,) eV and per-atom ``energies`` (N,) eV; ``forces`` (N, 3) eV/Å
        with ``compute_forces``; ``stress`` (B, 3, 3) eV/Å^3 with ``compute_stress`` (0 for
        structures without a periodic direction). Forces and stress come from one backward pass,
        kept differentiable in training mode so force and stress losses can be backpropagated."""
        self.check_graph(graph)
        derivatives = compute_forces or compute_stress
        geometry = self.geometry(graph, forces=derivatives, stress=compute_stress)
        weight = self.envelope(geometry.lengths) if self.envelope is not None else None
        h = self.embedding(graph.atomic_numbers)
        vectors = geometry.vectors
        moves = any(layer.coord_mlp is not None for layer in self.layers)
        inverse_count = neighbour_weight_inverse(graph.edge_index, graph.num_nodes, weight, h.dtype) if moves else None
        for layer in self.layers:
            h, displacement = layer(h, vectors, graph.edge_index, edge_weight=weight, inverse_count=inverse_count)
            if displacement is not None:
                vectors = _moved_vectors(vectors, displacement, graph.edge_index)
        atomic_output = self.readout(h).squeeze(1)
        return self.head(atomic_output, graph, geometry if derivatives else None, training=self.training)


@register_model("egnn_nbody", EGNNDynamicsOptions, small=EGNNDynamicsOptions(hidden=16, layers=2, cutoff=4.0))
class EGNNDynamics(MessagePassing, Model):
    """The n-body velocity model of the paper (EGNN_vel): future positions of charged particles.

    Inputs per particle, from ``graph.atom_properties``: ``velocities`` (N, 3) and ``charges``
    (N,) or (N, 1). Node input is |v_i|, edge attributes are [q_i q_j, |x_i - x_j|^2 of the input
    positions] and every layer also sees the current squared distance, as in the reference. The
    reference connects all particles of a system: the default cutoff of 1000 (length units of the
    data) does that for any realistic system, and no envelope is applied. Atomic numbers are
    ignored (use 1), e.g. for the arrays of :mod:`sciml.data.generators.nbody`::

        AtomicGraph.from_tensors(loc, [1] * len(loc), cutoff=model.cutoff,
                                 atom_properties={"velocities": vel, "charges": charges})

    Returns ``{"positions": (N, 3)}``, the predicted positions. With the defaults (64 features,
    4 layers) the parameter count equals the reference EGNN_vel: 134,020.
    """

    symmetry = "E(3)"
    outputs = {"positions": Output("atom_position", "")}
    atom_inputs = {"velocities": "atom_vector", "charges": "atom_scalar"}

    def __init__(self, options: EGNNDynamicsOptions = EGNNDynamicsOptions()):
        super().__init__(cutoff=options.cutoff, max_neighbors=options.max_neighbors)
        self.options = o = options
        self.embedding = nn.Linear(1, o.hidden)
        self.layers = nn.ModuleList(
            EGNNLayer(o.hidden, edge_attr_dim=2, attention=o.attention, update_coords=True, velocity=True,
                      normalize=o.normalize, tanh=o.tanh, coords_range=o.coords_range)
            for _ in range(o.layers)
        )  # fmt: skip

    def forward(self, graph: AtomicGraph) -> Dict[str, torch.Tensor]:
        """(N, 3) predicted ``positions`` from positions, velocities and charges."""
        missing = [k for k in ("velocities", "charges") if k not in graph.atom_properties]
        if missing:
            raise ValueError(f"the n-body model needs atom_properties {missing}")
        self.check_graph(graph)
        velocities = graph.atom_properties["velocities"]
        charges = graph.atom_properties["charges"].reshape(-1).to(velocities.dtype)
        centres, neighbours = graph.edge_index
        vectors = self.geometry(graph).vectors
        edge_attr = torch.stack([charges[centres] * charges[neighbours], vectors.square().sum(-1)], dim=1)
        h = self.embedding(velocities.norm(dim=1, keepdim=True))
        positions = graph.positions
        inverse_count = neighbour_weight_inverse(graph.edge_index, graph.num_nodes, None, h.dtype)
        for layer in self.layers:
            h, displacement = layer(
                h, vectors, graph.edge_index, edge_attr=edge_attr, velocities=velocities, inverse_count=inverse_count
            )
            positions = positions + displacement
            vectors = _moved_vectors(vectors, displacement, graph.edge_index)
        return {"positions": positions}

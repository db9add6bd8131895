"""EquiformerV2 (Liao, Wood, Das, Smidt, ICLR 2024) on sciml's graph layer.

Node features are (N, (lmax+1)^2, C) real spherical-harmonic coefficients (e3nn basis). Each
forward builds one rotation per edge taking the edge onto +y and its Wigner-D blocks, shared by
every layer; messages are SO(2) convolutions in those edge frames with orders |m| <= mmax. The
numerics follow fairchem's ``equiformer_v2`` (v1, fairchem-core 1.x), whose checkpoints load
through :func:`sciml.fairchem.load_fairchem_checkpoint`.

Outputs: energy = sum over atoms of the energy block's l = 0 output / ``avg_num_nodes`` (through
:class:`~sciml.models.heads.EnergyHead`, so training-set statistics apply), and forces either
from a direct head (an attention block whose l = 1 output is the force, as in the paper) or
conservatively, -dE/dx with stress from the strain derivative (``direct_forces=False``). Direct
models may also have a direct stress head (``stress_head``: fairchem's rank-2 symmetric head of
the OMat24 family, :mod:`~sciml.models.equiformer_v2.stress`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sciml.graph import AtomicGraph, MessagePassing
from sciml.graph.radial import GaussianBasis
from sciml.models.equiformer_v2.attention import EdgeDegreeEmbedding, SO2GraphAttention
from sciml.models.equiformer_v2.grid import GridFeedForward
from sciml.models.equiformer_v2.layers import EquivariantLayerNorm, GraphDropPath, SO3Linear
from sciml.models.equiformer_v2.stress import Rank2StressHead
from sciml.models.contract import ENERGY_OUTPUTS, Model, ModelOptions, Output, register_model
from sciml.models.heads import EnergyHead, check_embedded_elements
from sciml.ops import EdgeFrames

# fairchem's statistics of the OC20 IS2RE 100k set, its defaults for the OC20 models.
AVG_NUM_NODES = 77.81317
AVG_DEGREE = 23.395238876342773

class TransformerBlock(nn.Module):
    """Pre-norm block: x + DropPath(attention(norm(x))), then x + DropPath(ffn(norm(x)))."""

    def __init__(self, attention: SO2GraphAttention, ffn: GridFeedForward, lmax: int, channels: int,
                 drop_path_rate: float):
        super().__init__()
        self.norm_1 = EquivariantLayerNorm(lmax, channels)
        self.ga = attention
        self.norm_2 = EquivariantLayerNorm(lmax, channels)
        self.ffn = ffn
        self.drop_path = GraphDropPath(drop_path_rate)

    def forward(self, x, edge_scalars, atomic_numbers, edge_index, frames, batch, num_graphs):
        update = self.ga(self.norm_1(x), edge_scalars, atomic_numbers, edge_index, frames)
        x = x + self.drop_path(update, batch, num_graphs)
        return x + self.drop_path(self.ffn(self.norm_2(x)), batch, num_graphs)


@dataclass(frozen=True)
class EquiformerV2Options(ModelOptions):
    """Options of :class:`EquiformerV2`; the defaults are fairchem's (the OC20 2M configuration).

    Attributes:
        num_layers: transformer blocks.
        sphere_channels: C, channels per coefficient of the node features.
        attn_hidden_channels: channels of the attention's SO(2) convolution.
        num_heads, attn_alpha_channels, attn_value_channels: attention heads and their widths.
        ffn_hidden_channels: channels of the feed-forward network.
        lmax, mmax: highest degree of the features and order kept in the edge frames.
        grid_resolution: lat = long points of the sphere grid (None: fairchem's minimal grid).
        edge_channels: hidden width of the radial MLPs and of the element embeddings of edges.
        num_distance_basis: Gaussians on [0, cutoff] (fairchem always uses 600).
        cutoff: neighbour cutoff, Å. max_neighbors: nearest neighbours kept per atom.
        max_neighbors_rule: how ``max_neighbors`` treats ties (:class:`~sciml.graph.GraphSpec`):
            "ties" (default: neighbours tied with the last kept one stay, so the graph, and the
            outputs, follow rotations, permutations and supercells exactly), "strict" (exactly
            ``max_neighbors``: fairchem's default, set for its checkpoints) or "fairchem"
            (fairchem's ``enforce_max_neighbors_strictly=False``).
        max_num_elements: size of the element embeddings (atomic numbers 0..max-1).
        alpha_drop: dropout of the attention weights. drop_path_rate: per-structure stochastic depth.
        avg_num_nodes: the energy sum is divided by it. avg_degree: the edge-degree embedding sum is.
        direct_forces: forces from the force head (True) or -dE/dx with stress (False).
        stress_head: a direct stress head (fairchem's ``rank2_symmetric_head`` with
            ``decompose=True``); needs ``direct_forces``.
        stress_head_source_target: the stress head reads [x_sender, x_receiver] per edge
            (fairchem's ``use_source_target_embedding``) instead of x_receiver.
        stress_head_mlp_layers: Linear layers of the stress head's two MLPs (``num_mlp_layers``).
        energy_lin_ref: a learned per-element energy ``energy_lin_ref`` (max_num_elements,), in
            the energy output's units before its scale, added for every atom (fairchem's OC22
            ``energy_lin_ref`` with ``load_energy_lin_ref`` and ``use_energy_lin_ref``).
        dens: fairchem's DeNS layout (``equiformer_v2_dens_backbone``): a ``force_embedding`` whose
            input, the noised-force encoding, is zero outside denoising training, so only its
            l = 0 bias is added to every node's initial features; the force head also holds the
            unused ``denoising_pos_block`` (kept so the weights and parameter counts match).
        activation_checkpoint: recompute each block in the backward pass instead of storing its
            activations (less memory, about one more forward of time).
        so2_backend: "auto" (Triton rotation kernels on CUDA), "torch" or "triton".

    """

    num_layers: int = 12
    sphere_channels: int = 128
    attn_hidden_channels: int = 64
    num_heads: int = 8
    attn_alpha_channels: int = 64
    attn_value_channels: int = 16
    ffn_hidden_channels: int = 128
    lmax: int = 6
    mmax: int = 2
    grid_resolution: Optional[int] = 18
    edge_channels: int = 128
    num_distance_basis: int = 600
    cutoff: float = 12.0
    max_neighbors: Optional[int] = 20
    max_num_elements: int = 90
    alpha_drop: float = 0.1
    drop_path_rate: float = 0.05
    avg_num_nodes: float = AVG_NUM_NODES
    avg_degree: float = AVG_DEGREE
    direct_forces: bool = True
    activation_checkpoint: bool = False
    so2_backend: str = "auto"
    max_neighbors_rule: str = "ties"
    stress_head: bool = False
    stress_head_source_target: bool = True
    stress_head_mlp_layers: int = 2
    energy_lin_ref: bool = False
    dens: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.mmax <= self.lmax:
            raise ValueError(f"need 0 <= mmax <= lmax, got lmax={self.lmax}, mmax={self.mmax}")
        if self.lmax < 1 and self.direct_forces:
            raise ValueError("the direct force head reads the l = 1 features: lmax must be >= 1")
        if self.stress_head and not self.direct_forces:
            raise ValueError("stress_head is for direct models; conservative ones get stress from the strain derivative")
        if self.stress_head_mlp_layers < 1:
            raise ValueError(f"stress_head_mlp_layers must be >= 1, got {self.stress_head_mlp_layers}")


# fairchem's statistics of OMat24 (configs/omat24/all/*.yml), its defaults for the OMat24 family.
OMAT24_AVG_NUM_NODES = 31.17
OMAT24_AVG_DEGREE = 61.95
# the OMat24 family: rank-2 stress head, 96 elements, fairchem's non-strict neighbour cap
_OMAT24 = dict(max_num_elements=96, avg_num_nodes=OMAT24_AVG_NUM_NODES, avg_degree=OMAT24_AVG_DEGREE,
               drop_path_rate=0.1, stress_head=True, max_neighbors_rule="fairchem")

PRESETS: Dict[str, EquiformerV2Options] = {
    # configs/oc20/s2ef/2M/equiformer_v2/equiformer_v2_N@12_L@6_M@2.yml: 83,164,802 parameters
    "oc20_2M": EquiformerV2Options(num_layers=12, lmax=6, mmax=2, drop_path_rate=0.05),
    # configs/oc20/s2ef/all/equiformer_v2/equiformer_v2_N@8_L@4_M@2_31M.yml: 31,058,690
    "oc20_31M": EquiformerV2Options(num_layers=8, lmax=4, mmax=2, drop_path_rate=0.1),
    # configs/oc20/s2ef/all/equiformer_v2/equiformer_v2_N@20_L@6_M@3_153M.yml: 153,602,690
    "oc20_153M": EquiformerV2Options(num_layers=20, lmax=6, mmax=3, drop_path_rate=0.1),
    # configs/omat24/all/eqV2_{31M,86M,153M}.yml (also the MPtrj and sAlex fine-tunes' structure)
    "omat24_31M": EquiformerV2Options(num_layers=8, lmax=4, mmax=2, **_OMAT24),
    "omat24_86M": EquiformerV2Options(num_layers=10, lmax=6, mmax=4, **_OMAT24),
    "omat24_153M": EquiformerV2Options(num_layers=20, lmax=6, mmax=3, **_OMAT24),
}


_SMALL = EquiformerV2Options(num_layers=2, sphere_channels=16, attn_hidden_channels=16, num_heads=2,
                             attn_alpha_channels=8, attn_value_channels=4, ffn_hidden_channels=16, lmax=3, mmax=2,
                             edge_channels=16, num_distance_basis=64, cutoff=5.0, max_neighbors=None, alpha_drop=0.0,
                             drop_path_rate=0.0)


@register_model("equiformer_v2", EquiformerV2Options, presets=PRESETS, small=_SMALL)
class EquiformerV2(MessagePassing, Model):
    """EquiformerV2 energy (and force) model. ``build_model("equiformer_v2", preset="oc20_31M")``
    gives the paper's configurations (:data:`PRESETS`); keyword options override them.

    Options: :class:`EquiformerV2Options`.

    ``forward(graph, compute_forces=True, compute_stress=False)`` returns ``energy`` (B,) eV and
    ``energies`` (N,), plus ``forces`` (N, 3) eV/Å and, for conservative models and models with
    a stress head, ``stress`` (B, 3, 3) eV/Å^3 in ase's sign (conservative: 0 for structures
    without a periodic direction; the head predicts one for every structure).
    """

    symmetry = "SE(3)"  # SO(2) convolutions mix +m/-m like complex numbers: no reflections
    heads = ("energy_block", "force_block", "stress_head", "head")

    def __init__(self, options: EquiformerV2Options = EquiformerV2Options()):
        o = options
        super().__init__(o.cutoff, o.max_neighbors, max_neighbors_rule=o.max_neighbors_rule)
        self.options = o
        self.lmax, self.mmax, self.channels = o.lmax, o.mmax, o.sphere_channels
        self.max_num_elements = o.max_num_elements
        self.avg_num_nodes = o.avg_num_nodes
        self.direct_forces, self.activation_checkpoint = o.direct_forces, o.activation_checkpoint
        self.so2_backend = o.so2_backend
        self.sphere_embedding = nn.Embedding(o.max_num_elements, o.sphere_channels)
        # fairchem's GaussianSmearing(0, cutoff, 600, 2.0): width 2 x the centre spacing.
        self.distance_expansion = GaussianBasis(0.0, self.cutoff, o.num_distance_basis, width=2.0)
        radial = [o.num_distance_basis, o.edge_channels, o.edge_channels]
        self.edge_degree_embedding = EdgeDegreeEmbedding(o.sphere_channels, o.lmax, radial, o.max_num_elements, o.avg_degree)

        def attention(out_channels: int, alpha: float) -> SO2GraphAttention:
            return SO2GraphAttention(o.sphere_channels, o.attn_hidden_channels, o.num_heads, o.attn_alpha_channels,
                                     o.attn_value_channels, out_channels, o.lmax, o.mmax, radial, o.max_num_elements,
                                     o.grid_resolution, alpha)

        def ffn(out_channels: int) -> GridFeedForward:
            return GridFeedForward(o.sphere_channels, o.ffn_hidden_channels, out_channels, o.lmax, o.grid_resolution)

        self.blocks = nn.ModuleList(
            TransformerBlock(attention(o.sphere_channels, o.alpha_drop), ffn(o.sphere_channels), o.lmax, o.sphere_channels,
                             o.drop_path_rate)
            for _ in range(o.num_layers)
        )  # fmt: skip
        self.norm = EquivariantLayerNorm(o.lmax, o.sphere_channels)
        self.energy_block = ffn(1)
        self.force_block = attention(1, 0.0) if o.direct_forces else None
        if o.dens:
            self.force_embedding = SO3Linear(1, o.sphere_channels, o.lmax)
            self.denoising_pos_block = attention(1, 0.0) if o.direct_forces else None
        self.stress_head = (Rank2StressHead(o.sphere_channels, o.lmax, o.stress_head_mlp_layers,
                                            o.stress_head_source_target) if o.stress_head else None)
        self.head = EnergyHead()
        self.energy_lin_ref = nn.Parameter(torch.zeros(o.max_num_elements)) if o.energy_lin_ref else None
        # Output normalisation of converted fairchem models: energy += energy_shift per structure
        # and forces *= force_scale on top of the head's scale.
        self.register_buffer("energy_shift", torch.zeros(()))
        self.register_buffer("force_scale", torch.ones(()))

    @property
    def forces(self) -> str:
        """"direct" (the force head) or "conservative" (-dE/dx, with stress)."""
        return "direct" if self.direct_forces else "conservative"

    @property
    def outputs(self) -> Dict[str, Output]:
        """Energy outputs; stress for conservative models and models with a stress head."""
        stress = not self.direct_forces or self.stress_head is not None
        return {k: v for k, v in ENERGY_OUTPUTS.items() if k != "stress" or stress}

    @property
    def num_elements(self) -> int:
        """Size of the element embeddings: atomic numbers 0 .. num_elements - 1."""
        return self.max_num_elements

    def check_elements(self, graph: AtomicGraph) -> None:
        """Raise ValueError for atomic numbers outside this model's element embedding."""
        check_embedded_elements(graph, self.max_num_elements, "EquiformerV2", "max_num_elements")

    def edge_frames(self, vectors: torch.Tensor) -> EdgeFrames:
        """Wigner-D blocks of each edge's frame, computed once per forward for every layer."""
        return EdgeFrames.of(vectors, self.lmax, self.mmax, self.so2_backend)

    def forward(self, graph: AtomicGraph, compute_forces: bool = True,
                compute_stress: bool = False) -> Dict[str, torch.Tensor]:
        self.check_graph(graph)
        stress = compute_stress and not self.direct_forces
        derivatives = not self.direct_forces and (compute_forces or stress)
        numbers, edge_index = graph.atomic_numbers, graph.edge_index
        with torch.autocast(graph.positions.device.type, enabled=False):  # geometry stays in full precision
            geometry = self.geometry(graph, forces=derivatives, stress=stress)
            frames = self.edge_frames(geometry.vectors)
            edge_scalars = self.distance_expansion(geometry.lengths)

        x = self.sphere_embedding(numbers).unsqueeze(1)
        if self.options.dens:  # the force encoding is zero: its SO3 linear adds its l = 0 bias
            x = x + self.force_embedding.bias
        x = torch.cat([x, x.new_zeros(x.shape[0], (self.lmax + 1) ** 2 - 1, x.shape[2])], 1)
        x = x + self.edge_degree_embedding(edge_scalars, numbers, edge_index, frames, graph.num_nodes)
        for block in self.blocks:
            args = (x, edge_scalars, numbers, edge_index, frames, graph.batch, graph.num_graphs)
            if self.activation_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
        x = self.norm(x)

        node_energy = self.energy_block(x, scalars_only=True)[:, 0, 0] / self.avg_num_nodes
        if self.energy_lin_ref is not None:
            node_energy = node_energy + self.energy_lin_ref[numbers]
        out = self.head(node_energy, graph, geometry if derivatives else None, training=self.training)
        out["energy"] = out["energy"] + self.energy_shift
        # the shift is per structure: shared evenly by its atoms, so the per-atom energies sum to it
        out["energies"] = out["energies"] + self.energy_shift / graph.num_atoms_per_graph[graph.batch].to(x.dtype)
        if self.direct_forces and compute_forces:
            forces = self.force_block(x, edge_scalars, numbers, edge_index, frames, degrees=2)[:, 1:4, 0]
            out["forces"] = forces * (self.head.scale * self.force_scale)
        if self.stress_head is not None and compute_stress:
            out["stress"] = self.stress_head(x, geometry.vectors, edge_index, graph.batch, graph.num_graphs)
        return out

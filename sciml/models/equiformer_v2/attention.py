"""EquiformerV2's edge operations: the edge-degree embedding and the SO(2) equivariant graph
attention (the edge frames they rotate with are :class:`sciml.ops.EdgeFrames`).

Edges follow sciml's convention (:class:`~sciml.graph.AtomicGraph`): ``edge_index = (i, j)``,
the receiver i gets a message from the sender j and the edge vector is x_j - x_i (+ periodic
shift). fairchem stores the same edge as (source j, target i) with the same vector, so its
"source" is our sender and its "target" our receiver.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from sciml.models.equiformer_v2.grid import SeparableS2Activation
from sciml.models.equiformer_v2.layers import Dropout, RadialMLP, SmoothLeakyReLU, SO3Linear
from sciml.ops import EdgeFrames, scatter
from sciml.ops.so2 import SO2Linear, m_major_order


def segment_softmax(logits: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``logits`` (E, H) over the entries sharing ``index`` (E,) (one per receiver)."""
    expanded = index.unsqueeze(1).expand_as(logits)
    peak = torch.full((num_segments, logits.shape[1]), -math.inf, dtype=logits.dtype, device=logits.device)
    peak = peak.scatter_reduce(0, expanded, logits.detach(), "amax", include_self=True)
    weights = torch.exp(logits - peak[index])
    total = torch.zeros_like(peak).index_add_(0, index, weights)
    return weights / (total[index] + 1e-16)


def _edge_features(edge_scalars, atomic_numbers, edge_index, source_embedding, target_embedding):
    """[distance basis, embedding(Z_sender), embedding(Z_receiver)]: (E, basis + 2 edge_channels)."""
    receiver, sender = edge_index
    return torch.cat(
        [edge_scalars, source_embedding(atomic_numbers[sender]), target_embedding(atomic_numbers[receiver])], 1
    )


def gather_pairs(x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """[x_sender, x_receiver] per edge: (N, K, C) -> (E, K, 2C). index_select, whose backward is
    an index_add (fancy indexing's backward is a much slower accumulating index_put on CPU)."""
    receiver, sender = edge_index
    return torch.cat([x.index_select(0, sender), x.index_select(0, receiver)], 2)


def _element_embeddings(max_num_elements: int, channels: int) -> nn.ModuleList:
    """The sender and receiver element embeddings of an edge, initialised U(-0.001, 0.001)."""
    embeddings = nn.ModuleList(nn.Embedding(max_num_elements, channels) for _ in range(2))
    for embedding in embeddings:
        nn.init.uniform_(embedding.weight, -0.001, 0.001)
    return embeddings


class EdgeDegreeEmbedding(nn.Module):
    """Initial l > 0 node features from the edges around each atom (fairchem
    ``EdgeDegreeEmbedding``): a radial MLP of [distance basis, element embeddings] gives m = 0
    coefficients for every degree in the edge frame; they are rotated back, summed on the
    receiver and divided by ``avg_degree``. Returns (N, (lmax+1)^2, C)."""

    def __init__(self, channels: int, lmax: int, radial_channels: Sequence[int], max_num_elements: int,
                 avg_degree: float):
        super().__init__()
        self.channels, self.lmax, self.avg_degree = channels, lmax, avg_degree
        self.source_embedding, self.target_embedding = _element_embeddings(max_num_elements, radial_channels[-1])
        channels_list = [radial_channels[0] + 2 * radial_channels[-1], *radial_channels[1:]]
        self.rad_func = RadialMLP([*channels_list, (lmax + 1) * channels])

    def forward(self, edge_scalars: torch.Tensor, atomic_numbers: torch.Tensor, edge_index: torch.Tensor,
                frames: EdgeFrames, num_nodes: int) -> torch.Tensor:
        features = _edge_features(edge_scalars, atomic_numbers, edge_index, self.source_embedding,
                                  self.target_embedding)
        m0 = self.rad_func(features).view(-1, self.lmax + 1, self.channels)
        return scatter(frames.from_edge_m0(m0), edge_index[0], num_nodes, "sum") / self.avg_degree


class SO2GraphAttention(nn.Module):
    """Equivariant graph attention through SO(2) convolutions (fairchem
    ``SO2EquivariantGraphAttention`` with separable S2 activation and attention re-normalisation).

    For each edge, [x_sender, x_receiver] (2C channels) is rotated into the edge frame and goes
    through an SO(2) convolution whose m = 0 block also yields H alpha_channels attention
    features and ``hidden_channels`` gates; its inputs are scaled by a radial MLP of the edge
    scalars. The attention logit of head h is a_h . SmoothLeakyReLU(LayerNorm(alpha_h)), with a
    softmax over each receiver's incoming edges. Values: separable S2 activation, a second SO(2)
    convolution to H value_channels, times the attention weights, rotated back, summed on the
    receiver and mixed by a per-degree linear to ``out_channels``.

    ``forward(x (N, (lmax+1)^2, C), ...)`` -> (N, degrees^2, out_channels).
    """

    def __init__(self, sphere_channels: int, hidden_channels: int, num_heads: int, alpha_channels: int,
                 value_channels: int, out_channels: int, lmax: int, mmax: int, radial_channels: Sequence[int],
                 max_num_elements: int, grid_resolution: Optional[int] = None, alpha_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.alpha_channels, self.value_channels = num_heads, alpha_channels, value_channels
        self.source_embedding, self.target_embedding = _element_embeddings(max_num_elements, radial_channels[-1])
        self.so2_conv_1 = SO2Linear(lmax, mmax, 2 * sphere_channels, hidden_channels,
                                    extra_m0_output_channels=num_heads * alpha_channels + hidden_channels)
        channels_list = [radial_channels[0] + 2 * radial_channels[-1], *radial_channels[1:]]
        self.rad_func = RadialMLP([*channels_list, self.so2_conv_1.radial_features])
        self.alpha_norm = nn.LayerNorm(alpha_channels)
        self.alpha_act = SmoothLeakyReLU(0.2)
        bound = 1.0 / math.sqrt(alpha_channels)
        self.alpha_dot = nn.Parameter(torch.empty(num_heads, alpha_channels).uniform_(-bound, bound))
        self.alpha_dropout = Dropout(alpha_drop) if alpha_drop > 0 else None
        self.s2_act = SeparableS2Activation(lmax, mmax, grid_resolution, m_major=True)
        self.so2_conv_2 = SO2Linear(lmax, mmax, hidden_channels, num_heads * value_channels)
        self.proj = SO3Linear(num_heads * value_channels, out_channels, lmax)

    def forward(self, x: torch.Tensor, edge_scalars: torch.Tensor, atomic_numbers: torch.Tensor,
                edge_index: torch.Tensor, frames: EdgeFrames, degrees: Optional[int] = None) -> torch.Tensor:
        """``degrees`` limits the output to l < degrees (the force head needs l <= 1)."""
        receiver = edge_index[0]
        features = _edge_features(edge_scalars, atomic_numbers, edge_index, self.source_embedding,
                                  self.target_embedding)
        message = frames.to_edge(gather_pairs(x, edge_index))
        message, extra = self.so2_conv_1(message, self.rad_func(features))
        alpha_width = self.num_heads * self.alpha_channels
        logits, gates = extra.split([alpha_width, extra.shape[1] - alpha_width], 1)
        message = self.so2_conv_2(self.s2_act(gates, message))

        alpha = self.alpha_act(self.alpha_norm(logits.reshape(-1, self.num_heads, self.alpha_channels)))
        alpha = segment_softmax((alpha * self.alpha_dot).sum(-1), receiver, x.shape[0])  # (E, H)
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)
        edges, rows = message.shape[:2]
        message = message.view(edges, rows, self.num_heads, self.value_channels) * alpha.view(edges, 1, self.num_heads, 1)
        message = frames.from_edge(message.view(edges, rows, self.num_heads * self.value_channels), degrees)
        return self.proj(scatter(message, receiver, x.shape[0], "sum"), degrees)

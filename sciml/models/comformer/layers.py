"""ComFormer's blocks: edge encodings, node attention, the lattice edge update (iComFormer) and
the tensor-product update (eComFormer).

Parameters keep the reference implementation's names and shapes (divelab AIRS
``OpenMat/ComFormer``: ``ComformerConv``, ``ComformerConv_edge``, ``ComformerConvEqui``), but the
forward passes are rearranged for speed with the same mathematics:

* The first layer of each message MLP acts on a concatenation ``[a_i, a_j, e_ij]``; it is split
  into its three column blocks, so the node parts run once per atom instead of once per edge.
* Linear maps applied back to back (``lin_edge`` then the MLP's first layer, ``lin_key`` then
  ``key_update``'s first layer) are composed into one matrix per forward.
* In the edge update, the sum over the three lattice terms is taken before ``lin_concate``.

Edges follow sciml's convention: row 0 of ``edge_index`` is the centre i that receives, row 1
the neighbour j.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sciml.graph.message_passing import edge_counts
from sciml.graph.radial import GaussianBasis
from sciml.ops import FullyConnectedTensorProduct, scatter, spherical_harmonics_upto, tensor_product_conv
from sciml.ops.tracing import is_tracing


def _gaussians(start: float, stop: float, bins: int) -> GaussianBasis:
    """SchNet-style Gaussians exp(-(x - mu)^2 / spacing) on ``bins`` centres (ComFormer's RBFExpansion)."""
    spacing = (stop - start) / (bins - 1)
    # GaussianBasis takes sigma = width * spacing; exp(-d^2 / spacing) needs 2 sigma^2 = spacing
    return GaussianBasis(start, stop, bins, width=1.0 / math.sqrt(2.0 * spacing))


class ReciprocalDistanceEmbedding(nn.Module):
    """Length r (Å) -> Softplus(Linear(Gaussians(-0.75 / r))): (...,) -> (..., features).

    256 Gaussians on [-4, 0], i.e. lengths from 0.19 Å up; -0.75/r resolves short distances finely.
    """

    def __init__(self, bins: int = 256, features: int = 256):
        super().__init__()
        self.basis = _gaussians(-4.0, 0.0, bins)
        self.linear = nn.Linear(bins, features)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.linear(self.basis(-0.75 / lengths)))


#: Å: the length scale of the neighbour weights of :func:`chirality_pseudoscalars`.
CHIRALITY_LENGTH = 0.25
#: chi is compressed to asinh(chi / s) / asinh(1 / s) before its encoding: typical twists
#: (0.005-0.3) spread over [-1, 1] instead of sitting within one Gaussian of 0.
CHIRALITY_SCALE = 0.01


def chirality_pseudoscalars(vectors: torch.Tensor, edge_index: torch.Tensor, num_nodes: int,
                            length: float = CHIRALITY_LENGTH) -> torch.Tensor:
    """A handedness feature of every edge, for telling enantiomers apart (sciml's addition to
    ComFormer; see :class:`~sciml.models.comformer.ComFormer`).

    Each atom gets a direction D_i = sum_k w_ik u_ik / sum_k w_ik, the mean of the unit vectors
    u_ik to its neighbours weighted by w_ik = exp(-|r_ik| / ``length``) (nearest bonds dominate;
    |D_i| <= 1), and each edge the triple product chi_ij = det[u_ij, D_i, D_j] in [-1, 1]: a
    dihedral-like twist of the bond i-j. chi is invariant under rotations, translations and
    permutations, changes sign under a reflection (a pseudoscalar) and is the same for both
    directions of an edge, so summing over an undirected graph does not cancel it.

    Args:
        vectors: (E, 3) Å, edge vectors from the centre ``edge_index[0]`` to the neighbour
            ``edge_index[1]`` (no zero vectors).
        edge_index: (2, E) centre and neighbour indices.
        num_nodes: N.
        length: Å, decay length of the neighbour weights.

    Returns:
        (E,) asinh(chi / :data:`CHIRALITY_SCALE`) / asinh(1 / :data:`CHIRALITY_SCALE`), an odd,
        smooth compression of chi to [-1, 1], in the dtype of ``vectors``; differentiable with
        respect to ``vectors``.
    """
    centre, neighbour = edge_index
    lengths = vectors.norm(dim=1, keepdim=True)
    unit = vectors / lengths
    # the weights are normalised per centre, so shifting by the nearest distance changes nothing
    # but keeps exp() in range; the shift needs no gradient
    nearest = -scatter(-lengths.detach(), centre, num_nodes, "max")
    weights = torch.exp(-(lengths - nearest.index_select(0, centre)) / length)
    total = scatter(weights, centre, num_nodes, "sum").clamp(min=torch.finfo(vectors.dtype).tiny)
    direction = scatter(weights * unit, centre, num_nodes, "sum") / total  # (N, 3)
    twist = torch.linalg.cross(direction.index_select(0, centre), direction.index_select(0, neighbour), dim=1)
    chi = (unit * twist).sum(dim=1)
    return torch.asinh(chi / CHIRALITY_SCALE) / math.asinh(1.0 / CHIRALITY_SCALE)


class CosineEmbedding(nn.Module):
    """Cosine of an angle (or any value in [-1, 1]) -> Softplus(Linear(Gaussians(cos))) on
    [-1, 1]: (...,) -> (..., features)."""

    def __init__(self, bins: int = 256, features: int = 256):
        super().__init__()
        self.basis = _gaussians(-1.0, 1.0, bins)
        self.linear = nn.Linear(bins, features)

    def forward(self, cosines: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.linear(self.basis(cosines)))


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The reference's BatchNorm1d (``"batch"``) or a per-row LayerNorm (``"layer"``), which keeps
    every structure independent of the others in its batch (needed for forces and stress)."""
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'layer' or 'none', got {kind!r}")


def _mlp(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3 * channels, channels), nn.SiLU(), nn.Linear(channels, channels))


def _blocks(layer: nn.Linear, channels: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three (C, C) column blocks of a Linear(3C -> C) acting on a concatenation."""
    w = layer.weight
    return w[:, :channels], w[:, channels:2 * channels], w[:, 2 * channels:]


class NodeAttention(nn.Module):
    """ComFormer's node layer (``ComformerConv``, one head): x (N, C) -> (N, C).

    For each edge (i <- j) with edge features e_ij: k'_ij = MLP_k([k_i, k_j, W_e e_ij]),
    alpha_ij = q_i * k'_ij / sqrt(C) (a vector, one weight per channel),
    m_ij = MLP_v([v_i, v_j, W_e e_ij]) * sigmoid(BN(alpha_ij)); then
    x_i <- Softplus(x_i + BN(Linear(sum_j m_ij))).
    """

    def __init__(self, channels: int = 256, edge_features: int = 256, norm: str = "batch"):
        super().__init__()
        self.channels = channels
        self.lin_key = nn.Linear(channels, channels)
        self.lin_query = nn.Linear(channels, channels)
        self.lin_value = nn.Linear(channels, channels)
        self.lin_edge = nn.Linear(edge_features, channels)
        self.lin_concate = nn.Linear(channels, channels)
        self.lin_msg_update = _mlp(channels)
        self.key_update = _mlp(channels)
        self.bn = norm_layer(norm, channels)
        self.bn_att = norm_layer(norm, channels)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_features: torch.Tensor) -> torch.Tensor:
        """x (N, C); edge_index (2, E); edge_features (E, edge_features) -> (N, C)."""
        centre, neighbour = edge_index
        c = self.channels
        key, value = self.lin_key(x), self.lin_value(x)
        query = self.lin_query(x) / math.sqrt(c)
        k1, k2, k3 = _blocks(self.key_update[0], c)
        m1, m2, m3 = _blocks(self.lin_msg_update[0], c)
        # W_e e through the third blocks of both MLPs, their biases folded in: one GEMM, (E, 2C)
        edge_w = torch.cat([k3, m3]) @ self.lin_edge.weight
        edge_b = torch.cat([k3, m3]) @ self.lin_edge.bias + torch.cat([self.key_update[0].bias, self.lin_msg_update[0].bias])
        edge_key, edge_value = F.linear(edge_features, edge_w, edge_b).split(c, dim=1)
        # the node blocks run per atom, then are gathered (index_select: its backward is index_add)
        key_hidden = edge_key + (key @ k1.T).index_select(0, centre) + (key @ k2.T).index_select(0, neighbour)
        value_hidden = edge_value + (value @ m1.T).index_select(0, centre) + (value @ m2.T).index_select(0, neighbour)
        alpha = query.index_select(0, centre) * self.key_update[2](F.silu(key_hidden))
        message = self.lin_msg_update[2](F.silu(value_hidden)) * torch.sigmoid(self.bn_att(alpha))
        aggregated = scatter(message, centre, x.shape[0], "sum")
        return F.softplus(x + self.bn(self.lin_concate(aggregated)))


class EdgeLatticeUpdate(nn.Module):
    """iComFormer's edge layer (``ComformerConv_edge``): attention of each edge over the three
    lattice vectors of its structure.

    Inputs: edge features (E, C); per-structure lattice length features (B, 3, C); per-edge
    angle features (E, 3, C) of the edge with each lattice vector; ``edge_graph`` (E,) the
    structure of each edge. For lattice vector k: key k'_k = MLP_k([K e, K_k l_k, W a_k]),
    alpha_k = (Q e) * k'_k / sqrt(C), m_k = MLP_v([V e, V_k l_k, W a_k]) * sigmoid(BN(alpha_k));
    e <- Softplus(e + BN(Linear(sum_k m_k))). Returns (E, C).
    """

    def __init__(self, channels: int = 256, norm: str = "batch"):
        super().__init__()
        self.channels = channels
        self.lin_key = nn.Linear(channels, channels)
        self.lin_query = nn.Linear(channels, channels)
        self.lin_value = nn.Linear(channels, channels)
        self.lin_key_e1, self.lin_key_e2, self.lin_key_e3 = (nn.Linear(channels, channels) for _ in range(3))
        self.lin_value_e1, self.lin_value_e2, self.lin_value_e3 = (nn.Linear(channels, channels) for _ in range(3))
        self.lin_edge = nn.Linear(channels, channels, bias=False)
        self.lin_concate = nn.Linear(channels, channels)
        self.lin_msg_update = _mlp(channels)
        self.key_update = _mlp(channels)
        self.bn_att = norm_layer(norm, channels)
        self.bn = norm_layer(norm, channels)

    def forward(self, edge: torch.Tensor, lattice_lengths: torch.Tensor, lattice_angles: torch.Tensor,
                edge_graph: torch.Tensor) -> torch.Tensor:
        c = self.channels
        lin_keys = (self.lin_key_e1, self.lin_key_e2, self.lin_key_e3)
        lin_values = (self.lin_value_e1, self.lin_value_e2, self.lin_value_e3)
        hidden = []
        for mlp, lin_edge_part, lin_lattice in ((self.key_update, self.lin_key, lin_keys),
                                                (self.lin_msg_update, self.lin_value, lin_values)):
            first, second, third = _blocks(mlp[0], c)
            # [lin(e), lin_k(l_k), W a_k] through the MLP's first layer, block by block
            edge_part = F.linear(edge, first @ lin_edge_part.weight, first @ lin_edge_part.bias + mlp[0].bias)  # (E, C)
            lattice = torch.stack([lin(lattice_lengths[:, k]) for k, lin in enumerate(lin_lattice)], 1) @ second.T  # (B, 3, C)
            part = lattice_angles @ (third @ self.lin_edge.weight).T  # (E, 3, C)
            part = part + edge_part[:, None, :] + lattice.index_select(0, edge_graph)
            hidden.append(F.silu(part))
        key = self.key_update[2](hidden[0])
        alpha = (self.lin_query(edge) / math.sqrt(c))[:, None, :] * key
        gate = torch.sigmoid(self.bn_att(alpha.reshape(-1, c))).reshape(alpha.shape)
        message = (self.lin_msg_update[2](hidden[1]) * gate).sum(1)
        update = F.linear(message, self.lin_concate.weight, 3 * self.lin_concate.bias)
        return F.softplus(edge + self.bn(update))


class _TensorProductConv(nn.Module):
    """Mean over each centre's edges of tp(x_j, Y(r_ij), w(e_ij)), w from an MLP of the edge
    features (``TensorProductConvLayer``); ``residual`` adds x zero-padded to the output width.

    When x holds scalars only (eComFormer's first layer), each output irrep l is
    c_l (sum_u x_ju W_e[u, w]) Y_l(r_ij) with W_e = A s_e + b the MLP's last linear layer on its
    hidden features s_e; the contraction with x then runs per sending atom first:
    P_j = sum_u x_ju A[u, w, :], and per edge only s_e . P_j (H x 80 per edge instead of
    H x weight_numel). The result is the same tensor product.
    """

    def __init__(self, irreps_in: str, irreps_sh: str, irreps_out: str, edge_features: int, residual: bool):
        super().__init__()
        self.tp = FullyConnectedTensorProduct(irreps_in, irreps_sh, irreps_out, shared_weights=False)
        self.fc = nn.Sequential(nn.Linear(edge_features, edge_features), nn.Softplus(),
                                nn.Linear(edge_features, self.tp.weight_numel))
        self.residual = residual
        outputs = [p.i_out for p in self.tp.paths]
        self.scalar_input = (len(self.tp.irreps_in1) == 1 and self.tp.irreps_in1[0].ir.l == 0
                             and len(set(outputs)) == len(outputs) == len(self.tp.irreps_out))

    def forward(self, x, edge_index, edge_features, sh, inverse_degree):
        if self.scalar_input:
            out = self._scalar_input_conv(x, edge_index, edge_features, sh) * inverse_degree
        else:
            weights = self.fc(edge_features)
            # the tensor product runs in the widest input dtype, outside autocast (fp32 under bf16 autocast)
            dtype = torch.promote_types(torch.promote_types(x.dtype, sh.dtype), weights.dtype)
            with torch.autocast(x.device.type, enabled=False):
                out = tensor_product_conv(x.to(dtype), sh.to(dtype), weights.to(dtype), edge_index, self.tp)
            out = out * inverse_degree
        if self.residual:
            out = out + F.pad(x, (0, out.shape[-1] - x.shape[-1]))
        return out

    def _scalar_input_conv(self, x, edge_index, edge_features, sh):
        receiver, sender = edge_index
        hidden = self.fc[1](self.fc[0](edge_features))  # (E, H)
        last, u, paths = self.fc[2], x.shape[1], self.tp.paths
        # the last layer's rows of every path as (u, W, H), W = sum of the paths' multiplicities
        weight = torch.cat([last.weight[p.weight_slice].reshape(u, p.mul_out, -1) for p in paths], dim=1)
        bias = torch.cat([last.bias[p.weight_slice].reshape(u, p.mul_out) for p in paths], dim=1)
        width = weight.shape[1]
        per_atom = (x @ weight.reshape(u, -1)).reshape(x.shape[0], width, -1)  # P_j: (N, W, H)
        if is_tracing():  # the padded layout below is sized by the largest degree, a value tracing has not
            z = torch.bmm(per_atom.index_select(0, sender), hidden.unsqueeze(2)).squeeze(2)
        else:
            # s_e . P_j for all edges of a sender at once: edges grouped by sender, padded
            order = torch.argsort(sender, stable=True)
            counts = torch.bincount(sender, minlength=x.shape[0])
            senders = sender[order]
            slot = torch.arange(senders.numel(), device=x.device) - (torch.cumsum(counts, 0) - counts)[senders]
            padded = hidden.new_zeros(x.shape[0], int(counts.max()), hidden.shape[1])
            padded = padded.index_put((senders, slot), hidden[order])
            grouped = torch.bmm(padded, per_atom.transpose(1, 2))  # (N, max degree, W)
            z = hidden.new_zeros(senders.numel(), width).index_put((order,), grouped[senders, slot])
        z = z + (x @ bias)[sender]
        pieces = []
        for p in sorted(paths, key=lambda p: p.slice_out.start):
            d = 2 * p.l3 + 1
            factor = p.coefficient / math.sqrt(d)  # e3nn's path weight times the 0-l-l Clebsch-Gordan
            column = sum(q.mul_out for q in paths if q.weight_slice.start < p.weight_slice.start)
            block = z[:, column:column + p.mul_out, None] * sh[:, p.slice2][:, None, :]
            pieces.append((factor * block).reshape(-1, p.mul_out * d))
        return scatter(torch.cat(pieces, dim=1), receiver, x.shape[0], "sum")


class EquivariantUpdate(nn.Module):
    """eComFormer's equivariant node update (``ComformerConvEqui``): (N, C) -> (N, C).

    x -> Linear(C -> ns) -> TP conv to ns x 0e + nv x 1o + nv x 2e (with residual) -> TP conv back
    to ns x 0e -> Softplus(Linear(Softplus(BN(.)))) + Linear(x). Spherical harmonics l <= 2 of the
    edge vectors (component normalisation), mean aggregation.
    """

    def __init__(self, channels: int = 256, edge_features: int = 256, scalars: int = 64, vectors: int = 8,
                 norm: str = "batch"):
        super().__init__()
        sh = "1x0e + 1x1o + 1x2e"
        hidden = f"{scalars}x0e + {vectors}x1o + {vectors}x2e"
        self.node_linear = nn.Linear(channels, scalars)
        self.skip_linear = nn.Linear(channels, channels)
        self.nlayer_1 = _TensorProductConv(f"{scalars}x0e", sh, hidden, edge_features, residual=True)
        self.nlayer_2 = _TensorProductConv(hidden, sh, f"{scalars}x0e", edge_features, residual=False)
        self.bn = norm_layer(norm, scalars)
        self.node_linear_2 = nn.Linear(scalars, channels)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_features: torch.Tensor,
                vectors: torch.Tensor) -> torch.Tensor:
        """x (N, C); edge_index (2, E); edge_features (E, F); vectors (E, 3) Å from centre to neighbour."""
        sh = spherical_harmonics_upto(2, vectors)
        degree = edge_counts(edge_index[0], x.shape[0], x.dtype).clamp(min=1)
        inverse_degree = (1.0 / degree).unsqueeze(1)
        h = self.node_linear(x)
        h = self.nlayer_1(h, edge_index, edge_features, sh, inverse_degree)
        h = self.nlayer_2(h, edge_index, edge_features, sh, inverse_degree)
        return F.softplus(self.node_linear_2(F.softplus(self.bn(h)))) + self.skip_linear(x)

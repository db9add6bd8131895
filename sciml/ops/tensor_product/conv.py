"""Fused tensor-product convolution: gather -> tensor product -> scatter-sum in one kernel."""

from __future__ import annotations

from typing import Optional

import torch

from sciml.ops.scatter import scatter_sum
from sciml.ops.tracing import is_tracing
from sciml.ops.tensor_product.module import TensorProduct
from sciml.ops.tensor_product.reference import reference_tensor_product


def tensor_product_conv(
    node_feats: torch.Tensor,
    edge_attrs: torch.Tensor,
    edge_weights: Optional[torch.Tensor],
    edge_index: torch.Tensor,
    tp: TensorProduct,
    num_nodes: Optional[int] = None,
) -> torch.Tensor:
    """``out[i] = sum over edges e = (i <- j) of tp(node_feats[j], edge_attrs[e], edge_weights[e])``.

    Args:
        node_feats: (N, tp.irreps_in1.dim) features of the sending nodes.
        edge_attrs: (E, tp.irreps_in2.dim), e.g. spherical harmonics of the edge vectors.
        edge_weights: (E, tp.weight_numel) per-edge weights (e.g. from a radial network), or None
            for a tensor product with shared weights.
        edge_index: (2, E) int64 in sciml's convention: row 0 the receiving (centre) atom i, row 1
            the sending neighbour j.
        tp: the tensor product applied on every edge.
        num_nodes: number of output rows (default N).

    Returns:
        (num_nodes, tp.irreps_out.dim).

    With a sparse-core backend (cpu, triton, cuda, torch) the sender features are read through
    the edge index and each receiver's messages are summed inside the kernel, so per-edge messages
    are never stored; receivers are processed from receiver-sorted edges, so the sum is
    deterministic (no atomics) in the forward and in the backward (where the senders play the
    receivers' role). Products with channel-mixing paths (``uvw``/``uuw``) compute per-edge
    messages first and scatter them.
    """
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    num_edges = edge_index.shape[1]
    num_nodes = node_feats.shape[0] if num_nodes is None else num_nodes
    if node_feats.ndim != 2 or node_feats.shape[1] != tp.dim_in1:
        raise ValueError(f"node_feats must be (N, {tp.irreps_in1.dim}) for {tp.irreps_in1}, got {tuple(node_feats.shape)}")
    if edge_attrs.ndim != 2 or edge_attrs.shape[0] != num_edges or edge_attrs.shape[1] != tp.dim_in2:
        raise ValueError(f"edge_attrs must be ({num_edges}, {tp.irreps_in2.dim}) for {tp.irreps_in2}, got {tuple(edge_attrs.shape)}")
    if edge_index.numel() and not is_tracing() and (int(edge_index.min()) < 0 or int(edge_index[1].max()) >= node_feats.shape[0] or int(edge_index[0].max()) >= num_nodes):
        raise ValueError(f"edge_index refers to nodes outside 0..{max(num_nodes, node_feats.shape[0]) - 1}")
    receiver, sender = edge_index[0].long(), edge_index[1].long()
    if tp.shared_weights:
        if edge_weights is not None:
            raise ValueError("this tensor product has shared weights: pass edge_weights=None")
        weights = tp.weight.reshape(1, -1) if tp.weight_numel else node_feats.new_zeros(1, 0)
    else:
        if edge_weights is None or edge_weights.shape != (num_edges, tp.weight_numel):
            shape = None if edge_weights is None else tuple(edge_weights.shape)
            raise ValueError(f"edge_weights must be ({num_edges}, {tp.weight_numel}), got {shape}")
        weights = edge_weights
    backend = tp.backend_for(node_feats)
    lowered = tp._lowered
    if backend == "reference" or lowered.mixers:
        gathered = node_feats[sender]
        if backend == "reference":
            messages = reference_tensor_product(tp.paths, tp.dim_out, gathered, edge_attrs, weights[0] if tp.shared_weights else weights, tp.shared_weights)
        else:
            messages = lowered(gathered, edge_attrs, weights, backend)
        return scatter_sum(messages, receiver, dim_size=num_nodes)
    return lowered(node_feats, edge_attrs, weights, backend, rowmap_x1=sender, rowmap_out=receiver, out_rows=num_nodes)

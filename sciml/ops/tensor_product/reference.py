"""Reference backend: every path as one dense Clebsch-Gordan einsum (the ground truth in tests)."""

from __future__ import annotations

from typing import Sequence

import torch

from sciml.ops.irreps import clebsch_gordan_tensor
from sciml.ops.tensor_product.instructions import Path

# (weighted einsum, unweighted einsum) per mode; z = batch, ijk = irrep components
_EINSUMS = {
    "uvw": ("zuvw,ijk,zui,zvj->zwk", None),
    "uvu": ("zuv,ijk,zui,zvj->zuk", "ijk,zui,zvj->zuk"),
    "uvv": ("zuv,ijk,zui,zvj->zvk", "ijk,zui,zvj->zvk"),
    "uuw": ("zuw,ijk,zui,zuj->zwk", "ijk,zui,zuj->zk"),
    "uuu": ("zu,ijk,zui,zuj->zuk", "ijk,zui,zuj->zuk"),
    "uvuv": ("zuv,ijk,zui,zvj->zuvk", "ijk,zui,zvj->zuvk"),
    # the pair modes, on inputs whose channels were first picked pair by pair (u < v)
    "uvu<v": ("zu,ijk,zui,zuj->zuk", "ijk,zui,zuj->zuk"),
    "u<vw": ("zuw,ijk,zui,zuj->zwk", None),
}


def reference_tensor_product(
    paths: Sequence[Path], dim_out: int, x1: torch.Tensor, x2: torch.Tensor, weights: torch.Tensor, shared: bool
) -> torch.Tensor:
    """Tensor product of flat features ``x1`` (Z, dim1) and ``x2`` (Z, dim2) -> (Z, dim_out).

    ``weights`` is (weight_numel,) when ``shared`` else (Z, weight_numel).
    """
    batch = x1.shape[0]
    out = x1.new_zeros(batch, dim_out)
    for path in paths:
        a = x1[:, path.slice1].reshape(batch, path.mul1, 2 * path.l1 + 1)
        b = x2[:, path.slice2].reshape(batch, path.mul2, 2 * path.l2 + 1)
        if path.mode in ("uvu<v", "u<vw"):
            first, second = torch.triu_indices(path.mul1, path.mul2, 1, device=x1.device)
            a, b = a[:, first], b[:, second]
        cg = clebsch_gordan_tensor(path.l1, path.l2, path.l3, x1.dtype, str(x1.device))
        weighted, plain = _EINSUMS[path.mode]
        if path.has_weight:
            w = weights[..., path.weight_slice]
            w = w.reshape(path.weight_shape) if shared else w.reshape((batch,) + path.weight_shape)
            equation = weighted[1:] if shared else weighted  # shared weights have no batch index
            result = torch.einsum(equation, w, cg, a, b)
        else:
            result = torch.einsum(plain, cg, a, b)
        out[:, path.slice_out] += path.coefficient * result.reshape(batch, -1)
    return out

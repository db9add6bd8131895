"""eSCN / EquiformerV2 SO(2) operations: m-major layout, SO(2) linear, SO(2) convolution.

Features are (E, (lmax+1)^2, C): coefficient index l^2 + l + m in e3nn's basis (m = -l..l, polar
axis y), C channels. Rotating an edge's features by D(R) with R @ edge = +y (see
:func:`sciml.ops.wigner.edge_rotation`) makes rotations about the edge act on each pair of
orders (+m, -m) as a plane rotation by m times the angle, and leave m = 0 fixed. A linear map that
commutes with those is block diagonal in |m| and, for m > 0, multiplies the pair like a complex
number: that is the SO(2) linear layer, which has O(L^3) cost instead of a tensor product's O(L^6).

**m-major order** (fairchem ``CoefficientMappingModule.to_m``, read in FAIR-Chem/fairchem
``src/fairchem/core/models/equiformer_v2/so3.py``): first m = 0 for l = 0..lmax, then for each
m = 1..mmax the +m coefficients for l = m..lmax followed by the -m coefficients for l = m..lmax.
Orders |m| > mmax are dropped. Example lmax = 2, mmax = 1 (entries (l, m)):
(0,0) (1,0) (2,0) | (1,1) (2,1) (1,-1) (2,-1).

**Complex convention** (fairchem ``SO2_m_Convolution.forward``, ``so2_ops.py``): with the block's
input x_+ (the +m rows) and x_- (the -m rows), each flattened as (l - m) * C_in + c,
out_+ = W_r x_+ - W_i x_-,   out_- = W_r x_- + W_i x_+,
where one ``Linear(n_in, 2 n_out, bias=False)`` holds W_r in its first n_out output rows and W_i
in the last n_out; the m = 0 block is ``Linear((lmax+1) C_in, extra + (lmax+1) C_out)`` with bias,
whose first ``extra_m0_output_channels`` outputs are returned separately. Parameter names and
shapes follow fairchem's (``fc_m0``; ``fc_m[m-1]`` for fairchem's ``so2_m_conv[m-1].fc``), so its
weights load directly. With the rotation into the edge frame and back, this is fairchem's
``SO2_Convolution`` between ``_rotate`` and ``_rotate_inv``, including the rescaling by
sqrt((2l+1)/(2 mmax+1)) of degrees l > mmax when rotating back (``get_rotate_inv_rescale``).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from sciml.ops import backends
from sciml.ops.spherical_harmonics import spherical_harmonics

Wigner = Union[torch.Tensor, Sequence[torch.Tensor]]


def _check_lm(lmax: int, mmax: Optional[int]) -> int:
    if isinstance(lmax, bool) or not isinstance(lmax, (int, np.integer)) or lmax < 0:
        raise ValueError(f"lmax must be an int >= 0, got {lmax!r}")
    if mmax is None:
        return int(lmax)
    if isinstance(mmax, bool) or not isinstance(mmax, (int, np.integer)) or not 0 <= mmax <= lmax:
        raise ValueError(f"mmax must be an int in 0..lmax={lmax}, got {mmax!r}")
    return int(mmax)


@functools.lru_cache(maxsize=None)
def m_major_order(lmax: int, mmax: Optional[int] = None) -> Tuple[Tuple[int, int], ...]:
    """The (l, m) of each m-major position, see the module docstring."""
    mmax = _check_lm(lmax, mmax)
    order = [(l, 0) for l in range(lmax + 1)]
    for m in range(1, mmax + 1):
        order += [(l, m) for l in range(m, lmax + 1)] + [(l, -m) for l in range(m, lmax + 1)]
    return tuple(order)


@functools.lru_cache(maxsize=None)
def _m_major_index(lmax: int, mmax: int) -> np.ndarray:
    return np.array([l * l + l + m for l, m in m_major_order(lmax, mmax)], dtype=np.int64)


def m_major_index(lmax: int, mmax: Optional[int] = None, device: Optional[torch.device] = None) -> torch.Tensor:
    """(K',) long: position k of the m-major layout holds l-major coefficient ``index[k]``.

    K' = (lmax+1)^2 when mmax = lmax (default), fewer when orders above mmax are dropped.
    """
    return torch.as_tensor(_m_major_index(lmax, _check_lm(lmax, mmax)), device=device)


def _coefficient_dim(x: torch.Tensor, dim: int, size: int, name: str) -> int:
    if x.ndim == 0:
        raise ValueError(f"{name} must have a coefficient dimension, got a scalar")
    d = dim % x.ndim if -x.ndim <= dim < x.ndim else None
    if d is None or x.shape[d] != size:
        raise ValueError(f"{name} must have size {size} along dim {dim}, got shape {tuple(x.shape)}")
    return d


def to_m_major(x: torch.Tensor, lmax: int, mmax: Optional[int] = None, dim: int = -2) -> torch.Tensor:
    """Reorder l-major coefficients to the m-major layout, dropping orders |m| > mmax.

    Args:
        x: (..., (lmax+1)^2, ...) with the coefficients along ``dim`` (default -2, as in (E, K, C)).
        lmax: highest degree.
        mmax: highest order kept (default lmax).

    Returns:
        x with ``dim`` of size K' (see :func:`m_major_index`), a copy.
    """
    d = _coefficient_dim(x, dim, (lmax + 1) ** 2, "x")
    return x.index_select(d, m_major_index(lmax, mmax, x.device))


def from_m_major(x: torch.Tensor, lmax: int, mmax: Optional[int] = None, dim: int = -2) -> torch.Tensor:
    """Inverse of :func:`to_m_major`: l-major coefficients, zeros for the dropped orders.

    Args:
        x: (..., K', ...) m-major coefficients along ``dim``.

    Returns:
        x with ``dim`` of size (lmax+1)^2.
    """
    index = m_major_index(lmax, mmax, x.device)
    d = _coefficient_dim(x, dim, index.numel(), "x")
    shape = list(x.shape)
    shape[d] = (lmax + 1) ** 2
    if index.numel() == shape[d]:
        return x.index_select(d, torch.argsort(index))
    return x.new_zeros(shape).index_copy(d, index, x)


class SO2Linear(nn.Module):
    """SO(2)-equivariant linear map on edge-frame features in m-major layout (eSCN, EquiformerV2).

    Args:
        lmax: highest degree L.
        mmax: highest order kept (default L).
        in_channels, out_channels: channels C_in, C_out per coefficient.
        bias: bias on the m = 0 block (all its outputs, as fairchem's ``fc_m0``).
        extra_m0_output_channels: extra invariant outputs of the m = 0 block, returned separately
            (EquiformerV2 uses them for attention weights).

    Shapes: ``forward(x (E, K', C_in), radial (E, radial_features) or None)`` returns
    (E, K', C_out), or ``(out, extra (E, extra_m0_output_channels))`` when extra channels are set.
    K' is the m-major size (:func:`m_major_index`). ``radial`` multiplies the inputs of each block
    as in fairchem's ``SO2_Convolution``: its first (L+1) C_in entries scale the m = 0 inputs
    (flattened l * C_in + c), then for m = 1..mmax the next (L-m+1) C_in entries scale both the
    +m and the -m inputs.
    """

    def __init__(
        self,
        lmax: int,
        mmax: Optional[int] = None,
        in_channels: int = 1,
        out_channels: int = 1,
        bias: bool = True,
        extra_m0_output_channels: int = 0,
    ) -> None:
        super().__init__()
        self.mmax = _check_lm(lmax, mmax)
        self.lmax = int(lmax)
        if in_channels < 1 or out_channels < 1 or extra_m0_output_channels < 0:
            raise ValueError(
                f"channels must be positive, got in={in_channels}, out={out_channels}, extra={extra_m0_output_channels}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.extra_m0_output_channels = extra_m0_output_channels
        rows = self.lmax + 1
        self.fc_m0 = nn.Linear(rows * in_channels, extra_m0_output_channels + rows * out_channels, bias=bias)
        self.fc_m = nn.ModuleList()
        for m in range(1, self.mmax + 1):
            n = self.lmax - m + 1
            fc = nn.Linear(n * in_channels, 2 * n * out_channels, bias=False)
            with torch.no_grad():
                fc.weight.mul_(1.0 / math.sqrt(2.0))  # fairchem's initialisation of the complex pair
            self.fc_m.append(fc)
        self.num_coefficients = len(m_major_order(self.lmax, self.mmax))
        self.radial_features = in_channels * sum(self.lmax - m + 1 for m in range(self.mmax + 1))

    def _complex_product(self, m: int, plus: torch.Tensor, minus: torch.Tensor) -> torch.Tensor:
        """(W_r + i W_i)(x_+ + i x_-) with three real GEMMs instead of four (Gauss's trick):
        k1 = (W_r + W_i) x_+, k2 = W_r (x_- - x_+), k3 = W_i (x_+ + x_-); out_+ = k1 - k3,
        out_- = k1 + k2. plus, minus (E, n_in) -> (E, 2, n_out)."""
        real, imag = self.fc_m[m - 1].weight.chunk(2, dim=0)
        k1 = plus @ (real + imag).t()
        k2 = (minus - plus) @ real.t()
        k3 = (plus + minus) @ imag.t()
        return torch.stack([k1 - k3, k1 + k2], 1)

    def forward(
        self, x: torch.Tensor, radial: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """(E, K', C_in) m-major -> (E, K', C_out) [, (E, extra)]; see the class docstring."""
        if x.ndim != 3 or x.shape[1:] != (self.num_coefficients, self.in_channels):
            raise ValueError(
                f"x must have shape (E, {self.num_coefficients}, {self.in_channels}) (m-major, lmax={self.lmax}, "
                f"mmax={self.mmax}), got {tuple(x.shape)}"
            )
        edges = x.shape[0]
        if radial is not None and radial.shape != (edges, self.radial_features):
            raise ValueError(f"radial must have shape ({edges}, {self.radial_features}), got {tuple(radial.shape)}")
        # torch.split rather than slicing: its backward is one cat, not one zero-filled
        # full-size gradient per slice.
        sizes = [self.lmax + 1] + [2 * (self.lmax - m + 1) for m in range(1, self.mmax + 1)]
        pieces = torch.split(x, sizes, dim=1)
        scales = [None] * len(sizes)
        if radial is not None:
            scales = torch.split(
                radial, [size // (1 if m == 0 else 2) * self.in_channels for m, size in enumerate(sizes)], dim=1
            )
        x0 = pieces[0].reshape(edges, sizes[0] * self.in_channels)
        if scales[0] is not None:
            x0 = x0 * scales[0]
        out0 = self.fc_m0(x0)
        if self.extra_m0_output_channels:
            extra, out0 = torch.split(
                out0, [self.extra_m0_output_channels, out0.shape[1] - self.extra_m0_output_channels], dim=1
            )
        else:
            extra = None
        outs = [out0.reshape(edges, sizes[0], self.out_channels)]
        for m in range(1, self.mmax + 1):
            xm = pieces[m].reshape(edges, 2, sizes[m] // 2 * self.in_channels)
            if scales[m] is not None:
                xm = xm * scales[m].unsqueeze(1)  # the same radial weights for +m and -m
            plus, minus = xm.unbind(1)
            outs.append(self._complex_product(m, plus, minus).view(edges, sizes[m], self.out_channels))
        out = torch.cat(outs, 1) if len(outs) > 1 else outs[0]
        return out if extra is None else (out, extra)

    @classmethod
    def from_edge_tensor_product(
        cls,
        lmax: int,
        in_channels: int,
        out_channels: int,
        paths: Iterable[Tuple[int, int, int, torch.Tensor, float]],
        sh_normalization: str = "component",
    ) -> "SO2Linear":
        """The SO(2) linear map equal to a tensor product with the edge's spherical harmonics.

        For features x (C_in per degree 0..L) and Y = ``spherical_harmonics(.., edge, normalize=
        True, sh_normalization)``, the tensor product
        out[l3, k, w] = sum over paths (l1, l2, l3, W, a) of a * sum_{u,i,j} W[u, w] C^{l1 l2 l3}_{ijk} x[l1, i, u] Y^{l2}_j
        (C = e3nn's ``wigner_3j``, a = the path weight, e.g. e3nn's ``path_weight``) is, in the
        edge frame where Y is non-zero only at m = 0, an SO(2) linear map with mmax = L and no
        bias. Its blocks are read off the Clebsch-Gordan coefficients here (float64).

        Args:
            lmax: L of the input and output features.
            in_channels, out_channels: C_in, C_out.
            paths: (l1, l2, l3, W (C_in, C_out), a) with l1, l3 <= L (l2 any degree).
            sh_normalization: normalization of Y, as in :func:`spherical_harmonics`.

        Returns:
            An SO2Linear (lmax, mmax=lmax, no bias) holding the equivalent weights, in the dtype
            and on the device of the path weights (float64 coefficients, rounded once).
        """
        from e3nn.o3 import wigner_3j  # setup time only

        paths = list(paths)
        like = next((w for *_, w, _ in paths if isinstance(w, torch.Tensor) and w.is_floating_point()), None)
        layer = cls(lmax, lmax, in_channels, out_channels, bias=False)
        if like is not None:
            layer = layer.to(dtype=like.dtype, device=like.device)
        blocks = [np.zeros((lmax - m + 1, out_channels, lmax - m + 1, in_channels, 2, 2)) for m in range(lmax + 1)]
        pole = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
        for l1, l2, l3, weight, path_weight in paths:
            if not (0 <= l1 <= lmax and 0 <= l3 <= lmax and l2 >= 0):
                raise ValueError(f"path ({l1}, {l2}, {l3}) is outside lmax={lmax}")
            weight = torch.as_tensor(weight, dtype=torch.float64).detach().cpu().numpy()
            if weight.shape != (in_channels, out_channels):
                raise ValueError(
                    f"path ({l1}, {l2}, {l3}) weight must be ({in_channels}, {out_channels}), got {weight.shape}"
                )
            y_pole = spherical_harmonics(l2, pole, True, sh_normalization)[0].numpy()
            coupling = np.einsum("ijk,j->ik", wigner_3j(l1, l2, l3, dtype=torch.float64).numpy(), y_pole)
            coupling = path_weight * coupling  # (2 l1 + 1, 2 l3 + 1): x^{l1}_i -> out^{l3}_k
            m_in, m_out = np.abs(np.arange(-l1, l1 + 1))[:, None], np.abs(np.arange(-l3, l3 + 1))[None, :]
            if np.abs(coupling[m_in != m_out]).max(initial=0.0) > 1e-12:
                raise RuntimeError(f"path ({l1}, {l2}, {l3}) couples different |m| in the edge frame; check the basis")
            for m in range(min(l1, l3) + 1):
                # block[..., s_in, s_out]: from x_{s_in m} to out_{s_out m}, s = + (0) or - (1)
                signs = (1, -1) if m else (1,)
                sub = np.array([[coupling[l1 + si * m, l3 + so * m] for so in signs] for si in signs])
                if m == 0:
                    sub = np.pad(sub, ((0, 1), (0, 1)))
                blocks[m][l3 - m, :, l1 - m, :] += np.einsum("uw,st->wust", weight, sub)
        fc_m0 = blocks[0][..., 0, 0].reshape((lmax + 1) * out_channels, (lmax + 1) * in_channels)
        with torch.no_grad():
            layer.fc_m0.weight.copy_(torch.as_tensor(fc_m0))  # copy_ casts to the layer's dtype
            for m in range(1, lmax + 1):
                b = blocks[m]
                shape = ((lmax - m + 1) * out_channels, (lmax - m + 1) * in_channels)
                real, imag = b[..., 0, 0].reshape(shape), b[..., 0, 1].reshape(shape)
                # SO(2) symmetry of the Clebsch-Gordan coefficients: the block is complex-linear.
                if not (
                    np.allclose(b[..., 1, 1].reshape(shape), real, atol=1e-12)
                    and np.allclose(b[..., 1, 0].reshape(shape), -imag, atol=1e-12)
                ):
                    raise RuntimeError(f"tensor-product block m={m} is not of the SO(2) form; check the basis")
                layer.fc_m[m - 1].weight.copy_(torch.as_tensor(np.concatenate([real, imag], 0)))
        return layer


def edge_tensor_product_paths(
    tensor_product, weight: Optional[torch.Tensor] = None
) -> List[Tuple[int, int, int, torch.Tensor, float]]:
    """The paths of an e3nn ``TensorProduct`` of features with edge harmonics, for
    :meth:`SO2Linear.from_edge_tensor_product`.

    The tensor product must map C_in x (l = 0..L, each once, in order) and one copy of each
    harmonic degree to C_out x (l = 0..L), with ``uvw`` instructions and shared weights (e.g.
    ``FullyConnectedTensorProduct``). Only instruction metadata and weights are read.

    Args:
        tensor_product: an ``e3nn.o3.TensorProduct``.
        weight: its flat weight vector (default: its own ``weight`` parameter).

    Returns:
        [(l1, l2, l3, W (C_in, C_out), path_weight)].
    """
    irreps_in1, irreps_in2, irreps_out = tensor_product.irreps_in1, tensor_product.irreps_in2, tensor_product.irreps_out
    if any(mul != 1 for mul, _ in irreps_in2):
        raise ValueError(f"the second input must hold one copy of each degree (spherical harmonics), got {irreps_in2}")
    for name, irreps in (("input", irreps_in1), ("output", irreps_out)):
        ls = [ir.l for _, ir in irreps]
        if ls != list(range(len(ls))) or len({mul for mul, _ in irreps}) != 1:
            raise ValueError(f"the {name} irreps must be C x (l = 0, 1, ..., L) with one multiplicity, got {irreps}")
    if not tensor_product.shared_weights:
        raise ValueError("the tensor product must use shared weights (one set for all edges)")
    if weight is None:
        weight = tensor_product.weight
    paths = []
    for _, ins, w in tensor_product.weight_views(weight, yield_instruction=True):
        if ins.connection_mode != "uvw":
            raise ValueError(f"only 'uvw' instructions are supported, got {ins.connection_mode!r}")
        l1, l2, l3 = irreps_in1[ins.i_in1].ir.l, irreps_in2[ins.i_in2].ir.l, irreps_out[ins.i_out].ir.l
        paths.append((l1, l2, l3, w[:, 0, :], float(ins.path_weight)))
    return paths


def _wigner_blocks(wigner: Wigner, lmax: int, edges: int) -> List[torch.Tensor]:
    """Per-degree (E, 2l+1, 2l+1) views of a block-diagonal (E, K, K) Wigner-D or a block list."""
    if isinstance(wigner, torch.Tensor):
        dim = (lmax + 1) ** 2
        if wigner.ndim != 3 or wigner.shape != (edges, dim, dim):
            raise ValueError(f"wigner must have shape ({edges}, {dim}, {dim}), got {tuple(wigner.shape)}")
        # Split rows first: a gradient then zero-fills each block row once, not the whole matrix per block.
        block_rows = torch.split(wigner, [2 * l + 1 for l in range(lmax + 1)], dim=1)
        return [r.narrow(2, l * l, 2 * l + 1) for l, r in enumerate(block_rows)]
    blocks = list(wigner)
    if len(blocks) < lmax + 1 or any(
        b.shape != (edges, 2 * l + 1, 2 * l + 1) for l, b in enumerate(blocks[: lmax + 1])
    ):
        raise ValueError(f"wigner blocks must be [(E={edges}, 2l+1, 2l+1) for l = 0..{lmax}]")
    return blocks[: lmax + 1]


@functools.lru_cache(maxsize=None)
def _truncated_to_m_major(lmax: int, mmax: int) -> np.ndarray:
    """Positions in the degree-major truncated layout (l, m = -min(l, mmax)..) of each m-major entry."""
    truncated = [(l, m) for l in range(lmax + 1) for m in range(-min(l, mmax), min(l, mmax) + 1)]
    where = {lm: i for i, lm in enumerate(truncated)}
    return np.array([where[lm] for lm in m_major_order(lmax, mmax)], dtype=np.int64)


def rotate_to_edge_frame(x: torch.Tensor, wigner: Wigner, lmax: int, mmax: Optional[int] = None) -> torch.Tensor:
    """D(R_e) x_e, keeping orders |m| <= mmax, in m-major layout.

    Args:
        x: (E, (lmax+1)^2, C) l-major features in the global frame.
        wigner: D(R_e) for each edge (R_e from :func:`sciml.ops.wigner.edge_rotation`), either the
            block-diagonal (E, K, K) of :func:`sciml.ops.wigner.wigner_D` or the per-degree list of
            :func:`sciml.ops.wigner.wigner_D_blocks` (cheaper to build and apply).
        mmax: highest order kept (default lmax).

    Returns:
        (E, K', C) edge-frame features, m-major.
    """
    mmax = _check_lm(lmax, mmax)
    if x.ndim != 3 or x.shape[1] != (lmax + 1) ** 2:
        raise ValueError(f"x must have shape (E, {(lmax + 1) ** 2}, C), got {tuple(x.shape)}")
    parts = []
    degrees = torch.split(x, [2 * l + 1 for l in range(lmax + 1)], dim=1)
    for l, (block, xl) in enumerate(zip(_wigner_blocks(wigner, lmax, x.shape[0]), degrees)):
        keep = min(l, mmax)
        if l == 0:
            parts.append(xl)  # D^0 = 1 for every rotation
            continue
        parts.append(torch.bmm(block[:, l - keep : l + keep + 1] if keep < l else block, xl))
    truncated = torch.cat(parts, 1)
    return truncated.index_select(1, torch.as_tensor(_truncated_to_m_major(lmax, mmax), device=x.device))


@functools.lru_cache(maxsize=None)
def rotate_back_scales(lmax: int, mmax: int) -> Tuple[float, ...]:
    return tuple(math.sqrt((2 * l + 1) / (2 * mmax + 1)) if l > mmax else 1.0 for l in range(lmax + 1))


def rotate_from_edge_frame(
    x: torch.Tensor, wigner: Wigner, lmax: int, mmax: Optional[int] = None, rescale: bool = True
) -> torch.Tensor:
    """D(R_e)^T applied to m-major edge-frame features (dropped orders count as zero).

    Args:
        x: (E, K', C) m-major edge-frame features.
        wigner: as in :func:`rotate_to_edge_frame`.
        rescale: multiply degrees l > mmax by sqrt((2l+1)/(2 mmax+1)), as fairchem's
            ``SO3_Rotation.rotate_inv`` does (no effect when mmax = lmax).

    Returns:
        (E, (lmax+1)^2, C) l-major features in the global frame.
    """
    mmax = _check_lm(lmax, mmax)
    order = torch.as_tensor(_truncated_to_m_major(lmax, mmax), device=x.device)
    if x.ndim != 3 or x.shape[1] != order.numel():
        raise ValueError(
            f"x must have shape (E, {order.numel()}, C) (m-major, lmax={lmax}, mmax={mmax}), got {tuple(x.shape)}"
        )
    truncated = x.index_select(1, torch.argsort(order))
    scales = rotate_back_scales(lmax, mmax) if rescale else (1.0,) * (lmax + 1)
    parts = []
    degrees = torch.split(truncated, [2 * min(l, mmax) + 1 for l in range(lmax + 1)], dim=1)
    for l, (block, yl) in enumerate(zip(_wigner_blocks(wigner, lmax, x.shape[0]), degrees)):
        keep = min(l, mmax)
        if l == 0:
            parts.append(yl)  # D^0 = 1 for every rotation
            continue
        rows = block[:, l - keep : l + keep + 1] if keep < l else block
        part = torch.bmm(rows.transpose(1, 2), yl)
        parts.append(part * scales[l] if scales[l] != 1.0 else part)
    return torch.cat(parts, 1)


def _unpacked(wigner: Wigner, lmax: int, edges: Optional[int] = None) -> Wigner:
    return wigner


def edge_frame_rotations(backend: str, x: torch.Tensor) -> Tuple[Callable, Callable, Callable]:
    """``(pack, rotate_to, rotate_from)`` of the rotation backend for features ``x`` (the
    "rotation" family of :mod:`sciml.ops.backends`: "torch" is :func:`rotate_to_edge_frame` /
    :func:`rotate_from_edge_frame`; "triton" the fused kernels of :mod:`sciml.ops.so2_triton`).
    ``pack(wigner, lmax, edges)`` puts the Wigner-D blocks in the backend's layout, once per forward."""
    name = backends.resolve("rotation", backend, x.device, x.dtype)
    if name == "torch":
        return _unpacked, rotate_to_edge_frame, rotate_from_edge_frame
    kernels = backends.implementation("rotation", name)
    return kernels.pack_wigner, kernels.rotate_to_edge_frame, kernels.rotate_from_edge_frame


class SO2Convolution(nn.Module):
    """eSCN / EquiformerV2 SO(2) convolution of per-edge features.

    Rotates each edge's features into the edge frame (D(R_e) with R_e @ edge = +y), keeps orders
    |m| <= mmax, applies :class:`SO2Linear` (optionally modulated by per-edge radial weights) and
    rotates back, rescaling degrees above mmax as fairchem does. Equivariant: rotating the edge
    vectors by Q and the input features by D(Q) rotates the output by D(Q), whatever roll the edge
    frames have.

    Args:
        lmax: L of input and output features.
        mmax: highest order used in the edge frame (default L).
        in_channels, out_channels: C_in, C_out.
        bias: bias on the m = 0 block.
        extra_m0_output_channels: extra invariant outputs (E, extra) of the m = 0 block.
        rescale: the sqrt((2l+1)/(2 mmax+1)) factor for degrees l > mmax (fairchem's behaviour).
        backend: what rotates into the edge frame and back: "torch" (per-degree ``bmm`` and
            gathers, this module), "triton" (the fused kernels of :mod:`sciml.ops.so2_triton`) or
            "auto" (triton on CUDA when available, else torch). The SO(2) linear is torch GEMMs
            with either.

    Shapes: ``forward(x (E, (L+1)^2, C_in), wigner, radial=None)`` -> (E, (L+1)^2, C_out), or
    ``(out, extra)`` with extra channels. ``wigner`` is D(R_e): the (E, K, K) of
    :func:`~sciml.ops.wigner.wigner_D` or the block list of :func:`~sciml.ops.wigner.wigner_D_blocks`,
    computed once per forward and shared by all layers; ``radial`` (E, ``radial_features``) as in
    :class:`SO2Linear`.
    """

    def __init__(
        self,
        lmax: int,
        mmax: Optional[int] = None,
        in_channels: int = 1,
        out_channels: int = 1,
        bias: bool = True,
        extra_m0_output_channels: int = 0,
        rescale: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        backends.requested("rotation", backend)
        self.linear = SO2Linear(lmax, mmax, in_channels, out_channels, bias, extra_m0_output_channels)
        self.lmax, self.mmax = self.linear.lmax, self.linear.mmax
        self.rescale = rescale
        self.backend = backend
        self.radial_features = self.linear.radial_features

    def forward(
        self, x: torch.Tensor, wigner: Wigner, radial: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """(E, (L+1)^2, C_in) global-frame features -> (E, (L+1)^2, C_out) [, (E, extra)]."""
        pack, rotate_to, rotate_from = edge_frame_rotations(self.backend, x)
        wigner = pack(wigner, self.lmax, x.shape[0])  # once, for both rotations
        out = self.linear(rotate_to(x, wigner, self.lmax, self.mmax), radial)
        extra = None
        if isinstance(out, tuple):
            out, extra = out
        out = rotate_from(out, wigner, self.lmax, self.mmax, self.rescale)
        return out if extra is None else (out, extra)

    @classmethod
    def from_edge_tensor_product(
        cls,
        lmax: int,
        in_channels: int,
        out_channels: int,
        paths: Iterable[Tuple[int, int, int, torch.Tensor, float]],
        sh_normalization: str = "component",
    ) -> "SO2Convolution":
        """The convolution equal to the tensor product of x with the edge's harmonics.

        See :meth:`SO2Linear.from_edge_tensor_product`; with ``wigner`` = D(edge_rotation(edge))
        the output equals that tensor product for every edge.
        """
        conv = cls(lmax, lmax, in_channels, out_channels, bias=False)
        conv.linear = SO2Linear.from_edge_tensor_product(lmax, in_channels, out_channels, paths, sh_normalization)
        return conv.to(dtype=conv.linear.fc_m0.weight.dtype)

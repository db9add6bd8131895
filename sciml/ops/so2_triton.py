"""Triton kernels for the eSCN / EquiformerV2 edge-frame rotations, fused with the m-major layout.

:func:`rotate_to_edge_frame` and :func:`rotate_from_edge_frame` here compute exactly what the
functions of the same name in :mod:`sciml.ops.so2` compute (same arguments, same results, same
gradients), in one kernel each instead of per-degree ``bmm`` + ``cat`` + ``index_select``:

- to the edge frame, out (E, K', C) m-major, is written straight from x (E, (L+1)^2, C): only the
  Wigner rows of the kept orders |m| <= mmax are read, each input row of x is read once, each
  output row is written once, and the rotated-but-untruncated (E, (L+1)^2, C) tensor never exists;
- back from the edge frame, out (E, (L+1)^2, C) is written from the m-major y (E, K', C) with the
  transposed blocks, dropped orders counting as zero, and fairchem's rescale sqrt((2l+1)/(2 mmax+1))
  of degrees l > mmax applied in registers.

**Packed Wigner layout** (:func:`pack_wigner`): one contiguous (E, W) tensor, W = sum_l (2l+1)^2 =
(L+1)(2L+1)(2L+3)/3, holding D^0, D^1, ..., D^L of each edge one after the other, each row-major:
D^l[e, a, b] is at [e, l(2l-1)(2l+1)/3 + a (2l+1) + b]. Degree 0 is stored but, as in the torch
path, D^0 = 1 is used and gets a zero gradient. :class:`~sciml.ops.so2.SO2Convolution` packs once
per call and both rotations read the packed tensor.

**Kernels.** All three are one contraction of a Wigner block with a (rows, channels) slab of an
edge, unrolled over degrees and orders at compile time (``LMAX``, ``MMAX`` are ``constexpr``, so
every row offset and m-major position is a constant). In the first two a program owns
``BLOCK_E`` edges and ``BLOCK_C`` channels:

- ``_to_m_major_kernel``: out[pos(l, m)] = s_l sum_b D^l[l+m, b] x[l^2+b] for |m| <= min(l, mmax),
  as outer-product accumulations over b into a [BLOCK_E, kept orders, BLOCK_C] register tile (no
  reductions), stored to the m-major rows.
- ``_from_m_major_kernel``: out[l^2+b] = s_l sum_m D^l[l+m, b] y[pos(l, m)], the transposed
  contraction, accumulated over the kept m into a [BLOCK_E, 2l+1, BLOCK_C] tile.
- ``_wigner_outer_kernel``: G^l[l+m, b] = s_l sum_c y[pos(l, m), c] x[l^2+b, c], the per-edge
  outer product summed over channels (a program owns BLOCK_E edges and loops over channel blocks;
  the x^l slab is re-read for each kept row, from cache), written in the packed layout with zeros
  in the rows of dropped orders and in degree 0.

Tile sizes (:func:`tile_sizes`) are a first guess, not tuned on a device.

The three are closed under differentiation, so each autograd function's backward calls the other
two (as autograd functions again): the rotation's gradient w.r.t. x is the inverse-type
contraction, w.r.t. the Wigner blocks the outer product (forces flow through the geometry), and
derivatives of any order (force training) stay on these kernels. Every output element is written
by exactly one program: no atomics, bitwise reproducible. float32 and float64.

**The SO(2) linear stays in torch.** Its weights are shared by all edges, so each |m| block is a
plain (E, n_in) @ (n_in, n_out) GEMM: cuBLAS (and oneDNN on the CPU) run those near peak, which a
hand-written kernel would not beat; only the per-edge rotations, which are batched tiny products
plus a gather, gain from fusion.

Runs on CUDA devices and, for tests, in Triton's interpreter on the CPU when ``TRITON_INTERPRET=1``
was set before triton was imported (see :mod:`sciml.ops.tensor_product.triton_core`).
"""

from __future__ import annotations

import functools
import sys
from contextlib import nullcontext
from typing import Any, Optional, Tuple, Union

import torch

from sciml.ops import backends
from sciml.ops.so2 import Wigner, _check_lm, rotate_back_scales, _wigner_blocks
from sciml.ops.tensor_product import triton_core

triton = triton_core.triton
tl = triton_core.tl
# The kernels call compile-time helpers (triton.constexpr_function), which only recent triton releases have.
_SUPPORTED = triton is not None and hasattr(triton, "constexpr_function")

DTYPES = (torch.float32, torch.float64)
TILE = 1024  # register-tile elements (edges x rows x channels) a program aims for
MAX_BLOCK_C = 64
MAX_BLOCK_E = 16

PackedWigner = torch.Tensor


def available(device: Optional[Union[torch.device, str]] = None) -> bool:
    """Whether the kernels run on ``device``: CUDA with triton, or the CPU in Triton's interpreter."""
    return _SUPPORTED and triton_core.available(None if device is None else torch.device(device))


def unavailable_reason(device: Optional[Union[torch.device, str]] = None) -> str:
    """Why :func:`available` is False ("" when it is True)."""
    if triton is not None and not _SUPPORTED:
        return f"triton {triton.__version__} lacks triton.constexpr_function; a newer triton is needed"
    reason = triton_core.unavailable_reason()
    if not reason and device is not None and not available(device):
        reason = f"the kernels run on CUDA devices (or the CPU in Triton's interpreter), not on {device}"
    return reason


backends.register("rotation", "triton", unavailable_reason, implementation=sys.modules[__name__])


# ---------------------------------------------------------------- packed Wigner layout


def packed_wigner_size(lmax: int) -> int:
    """W = sum_{l <= lmax} (2l+1)^2 = (lmax+1)(2 lmax+1)(2 lmax+3)/3 entries per edge."""
    return (lmax + 1) * (2 * lmax + 1) * (2 * lmax + 3) // 3


def packed_block_offset(l: int) -> int:
    """Where D^l starts in the packed layout: sum_{j < l} (2j+1)^2 = l(2l-1)(2l+1)/3."""
    return l * (2 * l - 1) * (2 * l + 1) // 3


def pack_wigner(wigner: Union[Wigner, PackedWigner], lmax: int, edges: Optional[int] = None) -> PackedWigner:
    """The packed (E, W) Wigner layout of the module docstring, differentiable.

    Args:
        wigner: the block-diagonal (E, K, K) of :func:`~sciml.ops.wigner.wigner_D`, the per-degree
            list of :func:`~sciml.ops.wigner.wigner_D_blocks` (blocks past lmax are ignored), or an
            already packed (E, W) tensor (returned as is when contiguous).
        lmax: highest degree L.
        edges: E, checked when given.

    Returns:
        (E, W) contiguous, W = :func:`packed_wigner_size` (lmax).
    """
    size = packed_wigner_size(lmax)
    if isinstance(wigner, torch.Tensor) and wigner.ndim == 2:
        if wigner.shape[1] != size or (edges is not None and wigner.shape[0] != edges):
            e = "E" if edges is None else edges
            raise ValueError(f"packed wigner must have shape ({e}, {size}) for lmax={lmax}, got {tuple(wigner.shape)}")
        return wigner.contiguous()
    if not isinstance(wigner, torch.Tensor):
        wigner = list(wigner)
        if not wigner:
            raise ValueError(f"wigner blocks must be [(E, 2l+1, 2l+1) for l = 0..{lmax}], got an empty list")
    if edges is None:
        edges = (wigner if isinstance(wigner, torch.Tensor) else wigner[0]).shape[0]
    blocks = _wigner_blocks(wigner, lmax, edges)
    return torch.cat([b.reshape(edges, (2 * l + 1) ** 2) for l, b in enumerate(blocks)], 1)


# ---------------------------------------------------------------- kernels

def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _num_coefficients(lmax: int, mmax: int) -> int:
    """K' = len(m_major_order(lmax, mmax))."""
    return (lmax + 1) + sum(2 * (lmax - m + 1) for m in range(1, mmax + 1))


def m_major_position(l: int, m: int, lmax: int) -> int:
    """Position of (l, m) in the m-major layout (:func:`sciml.ops.so2.m_major_order`), in closed form:
    the m = 0 rows first (at l), then for a = 1..mmax the +a rows (l = a..L) and the -a rows, each
    run L + 1 - a long."""
    if m == 0:
        return l
    a = abs(m)
    return (lmax + 1) + (a - 1) * (2 * lmax + 2 - a) + (l - a) + (lmax + 1 - a if m < 0 else 0)


if _SUPPORTED:
    # The host helpers, evaluated at compile time inside the kernels.
    _pow2 = triton.constexpr_function(_next_power_of_2)
    _offset = triton.constexpr_function(packed_block_offset)
    _packed_size = triton.constexpr_function(packed_wigner_size)
    _num_m_major = triton.constexpr_function(_num_coefficients)
    _position = triton.constexpr_function(m_major_position)

    @triton.constexpr_function
    def _kept(l, mmax):
        """Highest order kept at degree l."""
        return min(l, mmax)

    @triton.constexpr_function
    def _is_kept(l, row, mmax):
        """Whether row ``row`` (order row - l) of D^l is kept."""
        return abs(row - l) <= mmax

    @triton.jit
    def _positions(l: tl.constexpr, m, LMAX: tl.constexpr):
        """m_major_position(l, m, LMAX) for a tensor of orders m."""
        a = tl.abs(m)
        first = (LMAX + 1) + (a - 1) * (2 * LMAX + 2 - a)
        signed = first + (l - a) + tl.where(m < 0, LMAX + 1 - a, 0)
        return tl.where(m == 0, l, signed)

    @triton.jit
    def _to_m_major_degree(
        x_rows, w_rows, out_rows, scales, c, e_mask, ec_mask, channels,
        l: tl.constexpr, KEEP: tl.constexpr, BLOCK_M: tl.constexpr, LMAX: tl.constexpr, RESCALE: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Degree l of _to_m_major_kernel: the kept orders |m| <= KEEP as one [edges, orders, channels] tile."""
        m = tl.arange(0, BLOCK_M) - KEEP
        em_mask = e_mask[:, None] & (m <= KEEP)[None, :]
        w_columns = w_rows[:, None] + (_offset(l) + (l + m) * (2 * l + 1))[None, :]  # D^l[l+m, 0]
        acc = tl.zeros([BLOCK_E, BLOCK_M, BLOCK_C], dtype=out_rows.dtype.element_ty)
        for b in tl.static_range(2 * l + 1):
            d = tl.load(w_columns + b, mask=em_mask, other=0.0)
            xb = tl.load(x_rows[:, None] + (l * l + b) * channels + c[None, :], mask=ec_mask, other=0.0)
            acc += d[:, :, None] * xb[:, None, :]
        if RESCALE:
            acc = acc * tl.load(scales + l)
        rows = _positions(l, m, LMAX)
        target = out_rows[:, None, None] + rows[None, :, None] * channels + c[None, None, :]
        tl.store(target, acc, mask=em_mask[:, :, None] & ec_mask[:, None, :])

    @triton.jit
    def _to_m_major_kernel(
        x, w, scales, out, edges, channels,
        LMAX: tl.constexpr, MMAX: tl.constexpr, RESCALE: tl.constexpr, UNIT_DEGREE0: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """out (E, K', C) m-major [pos(l, m)] = s_l sum_b w^l[l+m, b] x (E, (L+1)^2, C)[l^2+b]."""
        e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        e_mask = e < edges
        ec_mask = e_mask[:, None] & (c < channels)[None, :]
        e64 = e.to(tl.int64)
        x_rows = x + e64 * ((LMAX + 1) * (LMAX + 1)) * channels
        out_rows = out + e64 * _num_m_major(LMAX, MMAX) * channels
        w_rows = w + e64 * _packed_size(LMAX)
        x0 = tl.load(x_rows[:, None] + c[None, :], mask=ec_mask, other=0.0)
        if not UNIT_DEGREE0:  # the block is a cotangent whose degree 0 is no input (double backward)
            x0 = tl.zeros_like(x0)
        tl.store(out_rows[:, None] + c[None, :], x0, mask=ec_mask)  # D^0 = 1, s_0 = 1
        for l in tl.static_range(1, LMAX + 1):
            _to_m_major_degree(
                x_rows, w_rows, out_rows, scales, c, e_mask, ec_mask, channels,
                l, _kept(l, MMAX), _pow2(2 * _kept(l, MMAX) + 1), LMAX, RESCALE, BLOCK_E, BLOCK_C,
            )

    @triton.jit
    def _from_m_major_degree(
        y_rows, w_rows, out_rows, scales, c, e_mask, ec_mask, channels,
        l: tl.constexpr, KEEP: tl.constexpr, BLOCK_B: tl.constexpr, LMAX: tl.constexpr, RESCALE: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Degree l of _from_m_major_kernel: the 2l+1 output rows as one [edges, rows, channels] tile."""
        b = tl.arange(0, BLOCK_B)
        eb_mask = e_mask[:, None] & (b < 2 * l + 1)[None, :]
        acc = tl.zeros([BLOCK_E, BLOCK_B, BLOCK_C], dtype=out_rows.dtype.element_ty)
        for row in tl.static_range(l - KEEP, l + KEEP + 1):  # row l + m of D^l
            d = tl.load(w_rows[:, None] + _offset(l) + row * (2 * l + 1) + b[None, :], mask=eb_mask, other=0.0)
            ym = tl.load(y_rows[:, None] + _position(l, row - l, LMAX) * channels + c[None, :], mask=ec_mask, other=0.0)
            acc += d[:, :, None] * ym[:, None, :]
        if RESCALE:
            acc = acc * tl.load(scales + l)
        target = out_rows[:, None, None] + (l * l + b)[None, :, None] * channels + c[None, None, :]
        tl.store(target, acc, mask=eb_mask[:, :, None] & ec_mask[:, None, :])

    @triton.jit
    def _from_m_major_kernel(
        y, w, scales, out, edges, channels,
        LMAX: tl.constexpr, MMAX: tl.constexpr, RESCALE: tl.constexpr, UNIT_DEGREE0: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """out (E, (L+1)^2, C) [l^2+b] = s_l sum_{|m| <= min(l, mmax)} w^l[l+m, b] y (E, K', C)[pos(l, m)]."""
        e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        e_mask = e < edges
        ec_mask = e_mask[:, None] & (c < channels)[None, :]
        e64 = e.to(tl.int64)
        y_rows = y + e64 * _num_m_major(LMAX, MMAX) * channels
        out_rows = out + e64 * ((LMAX + 1) * (LMAX + 1)) * channels
        w_rows = w + e64 * _packed_size(LMAX)
        y0 = tl.load(y_rows[:, None] + c[None, :], mask=ec_mask, other=0.0)
        if not UNIT_DEGREE0:
            y0 = tl.zeros_like(y0)
        tl.store(out_rows[:, None] + c[None, :], y0, mask=ec_mask)
        for l in tl.static_range(1, LMAX + 1):
            _from_m_major_degree(
                y_rows, w_rows, out_rows, scales, c, e_mask, ec_mask, channels,
                l, _kept(l, MMAX), _pow2(2 * l + 1), LMAX, RESCALE, BLOCK_E, BLOCK_C,
            )

    @triton.jit
    def _wigner_outer_row(
        y_rows, x_rows, target, scales, e_mask, eb_mask, channels,
        l: tl.constexpr, row: tl.constexpr, BLOCK_B: tl.constexpr, LMAX: tl.constexpr, RESCALE: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """Row l+m of the packed gradient block l: sum over channel blocks of x^l (rows) times y[pos(l, m)]."""
        b = tl.arange(0, BLOCK_B)
        lanes = tl.arange(0, BLOCK_C)
        acc = tl.zeros([BLOCK_E, BLOCK_B, BLOCK_C], dtype=target.dtype.element_ty)
        for c0 in range(0, channels, BLOCK_C):
            c = c0 + lanes
            ec_mask = e_mask[:, None] & (c < channels)[None, :]
            ym = tl.load(y_rows[:, None] + _position(l, row - l, LMAX) * channels + c[None, :], mask=ec_mask, other=0.0)
            source = x_rows[:, None, None] + (l * l + b)[None, :, None] * channels + c[None, None, :]
            xl = tl.load(source, mask=eb_mask[:, :, None] & ec_mask[:, None, :], other=0.0)
            acc += xl * ym[:, None, :]
        summed = tl.sum(acc, axis=2)
        if RESCALE:
            summed = summed * tl.load(scales + l)
        tl.store(target, summed, mask=eb_mask)

    @triton.jit
    def _wigner_outer_kernel(
        y, x, scales, out, edges, channels,
        LMAX: tl.constexpr, MMAX: tl.constexpr, RESCALE: tl.constexpr,
        BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """out (E, W) packed: block l row l+m, column b = s_l sum_c y (E, K', C)[pos(l, m), c]
        x (E, (L+1)^2, C)[l^2+b, c] for |m| <= min(l, mmax); zero for other rows and degree 0."""
        e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
        e_mask = e < edges
        e64 = e.to(tl.int64)
        y_rows = y + e64 * _num_m_major(LMAX, MMAX) * channels
        x_rows = x + e64 * ((LMAX + 1) * (LMAX + 1)) * channels
        out_rows = out + e64 * _packed_size(LMAX)
        tl.store(out_rows, tl.zeros([BLOCK_E], dtype=out.dtype.element_ty), mask=e_mask)
        for l in tl.static_range(1, LMAX + 1):
            b = tl.arange(0, _pow2(2 * l + 1))
            eb_mask = e_mask[:, None] & (b < 2 * l + 1)[None, :]
            for row in tl.static_range(2 * l + 1):
                target = out_rows[:, None] + _offset(l) + row * (2 * l + 1) + b[None, :]
                if _is_kept(l, row, MMAX):
                    _wigner_outer_row(
                        y_rows, x_rows, target, scales, e_mask, eb_mask, channels,
                        l, row, _pow2(2 * l + 1), LMAX, RESCALE, BLOCK_E, BLOCK_C,
                    )
                else:
                    tl.store(target, tl.zeros([BLOCK_E, _pow2(2 * l + 1)], dtype=out.dtype.element_ty), mask=eb_mask)

else:  # pragma: no cover - depends on the installation
    _to_m_major_kernel = _from_m_major_kernel = _wigner_outer_kernel = None


# ---------------------------------------------------------------- launches


def tile_sizes(lmax: int, channels: int, edges: int) -> Tuple[int, int, int]:
    """(BLOCK_E, BLOCK_C, num_warps): channels first, then edges fill a TILE-element register tile
    of the widest degree (2 lmax + 1 rows, padded to a power of two)."""
    block_c = min(_next_power_of_2(channels), MAX_BLOCK_C)
    rows = _next_power_of_2(2 * lmax + 1)
    block_e = min(_next_power_of_2(edges), MAX_BLOCK_E, max(1, TILE // (rows * block_c)))
    num_warps = max(1, min(8, block_e * rows * block_c // 256))
    return block_e, block_c, num_warps


@functools.lru_cache(maxsize=64)
def _scales(lmax: int, mmax: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(rotate_back_scales(lmax, mmax), dtype=dtype, device=device)


def _launch(kernel: Any, first: torch.Tensor, second: torch.Tensor, out: torch.Tensor, lmax: int, mmax: int,
            rescale: bool, unit_degree0: Optional[bool], over_channels: bool) -> torch.Tensor:
    edges, channels = out.shape[0], first.shape[2]
    if edges == 0 or (channels == 0 and over_channels):
        return out
    if channels == 0:  # the outer product over no channels
        return out.zero_()
    block_e, block_c, num_warps = tile_sizes(lmax, channels, edges)
    grid = (triton.cdiv(edges, block_e), triton.cdiv(channels, block_c)) if over_channels else (triton.cdiv(edges, block_e),)
    flags = dict(LMAX=lmax, MMAX=mmax, RESCALE=rescale)
    if unit_degree0 is not None:
        flags["UNIT_DEGREE0"] = unit_degree0
    with torch.cuda.device(out.device) if out.device.type == "cuda" else nullcontext():
        kernel[grid](
            first.contiguous(), second.contiguous(), _scales(lmax, mmax, out.dtype, out.device), out, edges, channels,
            **flags, BLOCK_E=block_e, BLOCK_C=block_c, num_warps=num_warps,
        )
    return out


class _ToMMajor(torch.autograd.Function):
    """out[pos(l, m)] = s_l w^l[l+m, :] @ x^l; (x (E, K, C), w packed (E, W)) -> (E, K', C)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, lmax: int, mmax: int, rescale: bool,
                unit_degree0: bool) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.config = (lmax, mmax, rescale, unit_degree0)
        out = x.new_empty(x.shape[0], _num_coefficients(lmax, mmax), x.shape[2])
        return _launch(_to_m_major_kernel, x, w, out, lmax, mmax, rescale, unit_degree0, True)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        x, w = ctx.saved_tensors
        lmax, mmax, rescale, _ = ctx.config
        grad_x = _FromMMajor.apply(grad, w, *ctx.config) if ctx.needs_input_grad[0] else None
        grad_w = _WignerOuter.apply(grad, x, lmax, mmax, rescale) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None, None, None


class _FromMMajor(torch.autograd.Function):
    """out[l^2+b] = s_l sum_m w^l[l+m, b] y[pos(l, m)]; (y (E, K', C), w packed) -> (E, K, C)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, w: torch.Tensor, lmax: int, mmax: int, rescale: bool,
                unit_degree0: bool) -> torch.Tensor:
        ctx.save_for_backward(y, w)
        ctx.config = (lmax, mmax, rescale, unit_degree0)
        out = y.new_empty(y.shape[0], (lmax + 1) ** 2, y.shape[2])
        return _launch(_from_m_major_kernel, y, w, out, lmax, mmax, rescale, unit_degree0, True)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        y, w = ctx.saved_tensors
        lmax, mmax, rescale, _ = ctx.config
        grad_y = _ToMMajor.apply(grad, w, *ctx.config) if ctx.needs_input_grad[0] else None
        grad_w = _WignerOuter.apply(y, grad, lmax, mmax, rescale) if ctx.needs_input_grad[1] else None
        return grad_y, grad_w, None, None, None, None


class _WignerOuter(torch.autograd.Function):
    """G^l[l+m, b] = s_l sum_c y[pos(l, m), c] x[l^2+b, c]; (y (E, K', C), x (E, K, C)) -> packed (E, W)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, x: torch.Tensor, lmax: int, mmax: int, rescale: bool) -> torch.Tensor:
        ctx.save_for_backward(y, x)
        ctx.config = (lmax, mmax, rescale)
        out = x.new_empty(x.shape[0], packed_wigner_size(lmax))
        return _launch(_wigner_outer_kernel, y, x, out, lmax, mmax, rescale, None, False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        y, x = ctx.saved_tensors
        # G's degree-0 block and dropped rows are constant zeros: the cotangent's are ignored there.
        grad_y = _ToMMajor.apply(x, grad, *ctx.config, False) if ctx.needs_input_grad[0] else None
        grad_x = _FromMMajor.apply(y, grad, *ctx.config, False) if ctx.needs_input_grad[1] else None
        return grad_y, grad_x, None, None, None


# ---------------------------------------------------------------- public ops


def _prepare(x: torch.Tensor, rows: int, wigner: Union[Wigner, PackedWigner], lmax: int, what: str) -> PackedWigner:
    if x.ndim != 3 or x.shape[1] != rows:
        raise ValueError(f"x must have shape (E, {rows}, C) ({what}), got {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise TypeError(f"the triton SO(2) rotations support float32 and float64, got {x.dtype}")
    packed = pack_wigner(wigner, lmax, x.shape[0])
    if packed.dtype != x.dtype or packed.device != x.device:
        raise ValueError(
            f"wigner must match x's dtype and device ({x.dtype}, {x.device}), got ({packed.dtype}, {packed.device})"
        )
    if not available(x.device):
        raise RuntimeError(f"the triton SO(2) rotation kernels cannot run: {unavailable_reason(x.device)}")
    return packed


def rotate_to_edge_frame(
    x: torch.Tensor, wigner: Union[Wigner, PackedWigner], lmax: int, mmax: Optional[int] = None
) -> torch.Tensor:
    """D(R_e) x_e keeping orders |m| <= mmax, m-major: :func:`sciml.ops.so2.rotate_to_edge_frame` in one kernel.

    Args:
        x: (E, (lmax+1)^2, C) l-major features in the global frame, float32 or float64.
        wigner: D(R_e) per edge: packed (E, W) (:func:`pack_wigner`), the (E, K, K) block-diagonal
            matrix, or the per-degree block list; same dtype and device as x.
        lmax: highest degree L.
        mmax: highest order kept (default lmax).

    Returns:
        (E, K', C) edge-frame features in m-major order (K' = len(m_major_order(lmax, mmax))).
        Differentiable w.r.t. x and the Wigner blocks, to any order.
    """
    mmax = _check_lm(lmax, mmax)
    packed = _prepare(x, (lmax + 1) ** 2, wigner, lmax, "l-major")
    return _ToMMajor.apply(x, packed, lmax, mmax, False, True)


def rotate_from_edge_frame(
    x: torch.Tensor,
    wigner: Union[Wigner, PackedWigner],
    lmax: int,
    mmax: Optional[int] = None,
    rescale: bool = True,
) -> torch.Tensor:
    """D(R_e)^T applied to m-major edge-frame features: :func:`sciml.ops.so2.rotate_from_edge_frame` in one kernel.

    Args:
        x: (E, K', C) m-major edge-frame features (dropped orders count as zero), float32 or float64.
        wigner: as in :func:`rotate_to_edge_frame`.
        lmax, mmax: as in :func:`rotate_to_edge_frame`.
        rescale: multiply degrees l > mmax by sqrt((2l+1)/(2 mmax+1)) (fairchem's ``rotate_inv``).

    Returns:
        (E, (lmax+1)^2, C) l-major features in the global frame; differentiable w.r.t. x and the
        Wigner blocks, to any order.
    """
    mmax = _check_lm(lmax, mmax)
    packed = _prepare(x, _num_coefficients(lmax, mmax), wigner, lmax, f"m-major, lmax={lmax}, mmax={mmax}")
    return _FromMMajor.apply(x, packed, lmax, mmax, bool(rescale) and mmax < lmax, True)

"""Real spherical harmonics in e3nn's basis: the public API (``spherical_harmonics``,
``spherical_harmonics_upto``, ``SphericalHarmonics``) and its torch evaluation with autograd.

Convention and recurrence: :mod:`sciml.ops.sh_recurrence` (identical to
``e3nn.o3.spherical_harmonics``: polar axis y, m = -l..l inside each degree, degrees concatenated;
normalizations "integral", "component", "norm"). The recurrence runs on rows (component-major, one
row of N values per component, in chunks of points), which is fast on CPU; one transpose at the end
gives the (..., K) layout.

Gradients: the backward applies the banded matrices A_l (dY^l/dr in the span of Y^{l-1}) instead
of replaying the recurrence. Higher derivatives (a loss on forces) are exact too: the backward is
itself differentiable.

Two implementations of the same recurrence and gradient:

- ``c`` (CPU, float32/float64): generated C kernels (:mod:`sciml.ops.sh_codegen`) run by the
  operators ``torch.ops.sciml.spherical_harmonics`` / ``spherical_harmonics_backward``
  (``sciml.ops.library``). A backward that must itself be differentiable (``create_graph=True``)
  recomputes the harmonics with the ``torch`` code and differentiates that.
- ``torch``: the recurrence on rows of plain tensor operations (any device and dtype, any order
  of derivatives), also the fallback when no C compiler works.

``SCIML_SH_BACKEND`` = "auto" (default: ``c`` where it applies and builds, else ``torch``), "c"
(error if it cannot be used) or "torch" selects one (the "harmonics" family of
:mod:`sciml.ops.backends`); it also applies to :mod:`sciml.ops.wigner`.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from e3nn import o3
from torch import nn

from sciml.ops import library
from sciml.ops.irreps import parse_irreps
from sciml.ops.jit_trace import traced_call
from sciml.ops.sh_codegen import harmonics_kernels, use_compiled
from sciml.ops.sh_recurrence import MAX_L, NORMALIZATIONS, GradientBands, gradient_bands, harmonic_rows, recurrence_constants
from sciml.ops.tracing import built_outside_tracing, is_tracing

Degrees = Union[int, Sequence[int], str, o3.Irreps]


def _check_ls(ls: Tuple[int, ...]) -> Tuple[int, ...]:
    if not ls:
        raise ValueError("the list of degrees is empty")
    bad = [l for l in ls if l < 0 or l > MAX_L]
    if bad:
        raise ValueError(f"spherical harmonic degrees must lie in 0..{MAX_L}, got {bad}")
    return ls


def parse_degrees(degrees: Degrees, irreps_in: Optional[Union[str, o3.Irreps]] = None) -> Tuple[Tuple[int, ...], o3.Irreps, o3.Irreps]:
    """Degrees with e3nn's meaning -> (degrees in output order, output irreps, input irreps).

    An int is one degree; a sequence lists degrees; a str or ``Irreps`` lists irreps whose
    multiplicities repeat the degree and whose parities must be those of the harmonics of the input
    (``irreps_in`` "1o", a vector, or "1e", a pseudovector; for an irreps argument it defaults to
    "1e" when an odd degree has even parity, as in e3nn).
    """
    if isinstance(degrees, bool):
        raise ValueError("degrees must be an int, a sequence of ints or irreps, not a bool")
    if isinstance(degrees, str):
        degrees = parse_irreps(degrees, "degrees")
    if isinstance(degrees, o3.Irreps) and irreps_in is None:
        irreps_in = "1e" if any(l % 2 == 1 and p == 1 for _, (l, p) in degrees) else None
    irreps_in = o3.Irreps(irreps_in if irreps_in is not None else "1o")
    if irreps_in not in (o3.Irreps("1x1o"), o3.Irreps("1x1e")):
        raise ValueError(f"irreps_in for spherical harmonics must be a vector (1x1o) or a pseudovector (1x1e), not {irreps_in}")
    parity = irreps_in[0].ir.p
    if isinstance(degrees, o3.Irreps):
        for _, (l, p) in degrees:
            if p != parity**l:
                raise ValueError(
                    f"irreps {degrees} ask for degree {l} with parity {p}, but harmonics of a {irreps_in} input have parity {parity**l}"
                )
        ls = tuple(l for mul, (l, _) in degrees for _ in range(mul))
    elif isinstance(degrees, (int, np.integer)):
        ls = (int(degrees),)
    else:
        ls = tuple(int(l) for l in degrees)
    _check_ls(ls)
    return ls, o3.Irreps([(1, (l, parity**l)) for l in ls]).simplify(), irreps_in


def _selected_rows(rows: torch.Tensor, ls: Tuple[int, ...], normalization: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(all degrees 0..max(ls) (K_full, N), the degrees ``ls`` (K, N)) of point rows (3, N)."""
    blocks = harmonic_rows(max(ls), rows, normalization)
    full = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    picked = full if list(ls) == list(range(len(blocks))) else torch.cat([blocks[l] for l in ls])
    return full, picked


@functools.lru_cache(maxsize=64)
@built_outside_tracing
def _gradient_tables(ls: Tuple[int, ...], normalization: str, dtype: torch.dtype, device: torch.device) -> GradientBands:
    """:func:`~sciml.ops.sh_recurrence.gradient_bands` as tensors on ``device``: int64 indices (R,),
    weights (R, 1) of ``dtype``."""
    bands = gradient_bands(ls, normalization)
    return GradientBands(
        **{
            name: torch.tensor(value, dtype=dtype, device=device).view(-1, 1)
            if name.startswith("w_")
            else torch.tensor(value, dtype=torch.long, device=device)
            for name, value in bands._asdict().items()
        }
    )


def _gradient_of_rows(grad_rows: torch.Tensor, full: torch.Tensor, t: GradientBands) -> torch.Tensor:
    """dL/d(point rows) (3, N) from dL/dY as rows (K, N) and the rows of degrees 0..lmax-1 (or more)."""
    g0, g2 = grad_rows.index_select(0, t.g0), grad_rows.index_select(0, t.g2)
    prev = full.index_select(0, t.prev)
    gx = (torch.addcmul(t.w_x0 * g0, t.w_x2, g2) * full.index_select(0, t.flip)).sum(0)
    gy = (t.w_y1 * grad_rows.index_select(0, t.g1) * prev).sum(0)
    gz = (torch.addcmul(t.w_z0 * g0, t.w_z2, g2) * prev).sum(0)
    return torch.stack([gx, gy, gz])


# Points per chunk: the recurrence makes ~10 passes over (K, chunk) rows; chunks keep them in
# cache (measured up to 1.3x faster than whole arrays at 100k points, lmax 4-8, one thread).
_CHUNK = 16384


class _Harmonics(torch.autograd.Function):
    """Point rows (3, N) -> (harmonics of the degrees ``ls``: (N, K), or (K, N) if ``as_rows``;
    the rows of the degrees below lmax or None).

    Backward: dL/dr_k = sum over degrees of sum_ij G^l_i A_l[k, j, i] Y^{l-1}_j, using the banded
    structure of A_l (:func:`_gradient_tables`) and the rows Y^0..Y^{lmax-1} kept from the forward
    pass (its second output, returned rather than stashed so the function also runs under
    ``torch.func`` transforms), instead of replaying the recurrence; both passes run over chunks of
    points. When a graph of the backward is requested (double backward, e.g. a loss on forces), or
    the rows were not kept, they are recomputed with autograd so that the gradient is itself
    differentiable.
    """

    @staticmethod
    def forward(rows: torch.Tensor, ls: Tuple[int, ...], normalization: str, as_rows: bool):
        n, k, lmax = rows.shape[1], sum(2 * l + 1 for l in ls), max(ls)
        out = rows.new_empty(k, n) if as_rows else rows.new_empty(n, k)
        # Degrees below lmax, for the backward (about (lmax / (lmax + 1))^2 of the output's size).
        keep = rows.requires_grad and torch.is_grad_enabled() and lmax > 0
        if is_tracing():  # one piece: a loop over a symbolic number of points would fix it
            full, picked = _selected_rows(rows, ls, normalization)
            return (picked if as_rows else picked.t()), (full[: lmax * lmax] if keep else None)
        lower = rows.new_empty(lmax * lmax, n) if keep else None
        for start in range(0, n, _CHUNK):
            stop = start + _CHUNK
            full, picked = _selected_rows(rows[:, start:stop], ls, normalization)
            if as_rows:
                out[:, start:stop] = picked
            else:
                out[start:stop] = picked.t()
            if lower is not None:
                lower[:, start:stop] = full[: lmax * lmax]
        return out, lower

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        rows, ls, normalization, as_rows = inputs
        ctx.ls, ctx.normalization, ctx.as_rows = ls, normalization, as_rows
        if output[1] is not None:
            ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(rows, output[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _):
        rows, lower = ctx.saved_tensors
        ls, normalization = ctx.ls, ctx.normalization
        if max(ls) == 0:
            return torch.zeros_like(rows), None, None, None
        t = _gradient_tables(ls, normalization, rows.dtype, rows.device)
        grad_rows = grad if ctx.as_rows else grad.t()
        if torch.is_grad_enabled() or lower is None:
            full = _selected_rows(rows, ls, normalization)[0]
            return _gradient_of_rows(grad_rows.contiguous(), full, t), None, None, None
        if is_tracing():
            return _gradient_of_rows(grad_rows.contiguous(), lower, t), None, None, None
        out = torch.empty_like(rows)
        for start in range(0, rows.shape[1], _CHUNK):
            stop = start + _CHUNK
            out[:, start:stop] = _gradient_of_rows(grad_rows[:, start:stop].contiguous(), lower[:, start:stop], t)
        return out, None, None, None


def harmonics_of_rows(
    rows: torch.Tensor, ls: Tuple[int, ...], normalization: str = "component", as_rows: bool = False
) -> torch.Tensor:
    """Harmonics of points given as rows (3, N) = (x, y, z), for kernels that avoid transposes.

    No normalization of the points; ``ls`` must already be validated (see :func:`spherical_harmonics`).
    Returns (N, K), or (K, N) when ``as_rows``. Differentiable (any order).
    """
    return _Harmonics.apply(rows, ls, normalization, as_rows)[0]


def torch_harmonics(points: torch.Tensor, ls: Tuple[int, ...], normalization: str, normalize: bool) -> torch.Tensor:
    """Points (N, 3) -> (N, K) with the torch code."""
    rows = points.t().contiguous()
    if normalize:
        # As torch.nn.functional.normalize (what e3nn uses): v / max(|v|, 1e-12). vector_norm's
        # gradient is 0 at v = 0 (sqrt of the sum of squares would give 0/0 there); taken over
        # the contiguous axis of ``points``, as over the rows' axis it is many times slower.
        rows = rows / torch.linalg.vector_norm(points, dim=1).clamp_min(1e-12)
    return harmonics_of_rows(rows, ls, normalization)


def _harmonics(ls: Tuple[int, ...], vectors: torch.Tensor, normalize: bool, normalization: str) -> torch.Tensor:
    """Harmonics of the validated degrees ``ls`` of ``vectors`` (..., 3) -> (..., sum of 2l+1)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {normalization!r}; use one of {NORMALIZATIONS}")
    if vectors.ndim == 0 or vectors.shape[-1] != 3:
        raise ValueError(f"vectors must have shape (..., 3), got {tuple(vectors.shape)}")
    if not vectors.is_floating_point():
        raise ValueError(f"vectors must be a floating-point tensor, got {vectors.dtype}")
    batch = vectors.shape[:-1]
    points = vectors.reshape(-1, 3)
    kernels = harmonics_kernels(ls, normalization, normalize, points.dtype) if use_compiled(points) else None
    if kernels is not None:
        dim = sum(2 * l + 1 for l in ls)
        out = library.call("spherical_harmonics", points, kernels, dim, list(ls), normalization, normalize)
    else:
        out = torch_harmonics(points, ls, normalization, normalize)
    return out.view(*batch, out.shape[-1])


def spherical_harmonics(degrees: Degrees, x: torch.Tensor, normalize: bool, normalization: str = "integral") -> torch.Tensor:
    """Real spherical harmonics of ``x`` in e3nn's basis: ``e3nn.o3.spherical_harmonics``, same
    arguments and meaning, equal in values and in gradients of any order.

    Args:
        degrees: one degree (int), a sequence of degrees, or irreps ("1x0e+1x1o+2x2e": degrees
            repeated by multiplicity, parities checked), each degree 0..16; output in that order.
        x: (..., 3) points (any length unit; with ``normalize=False`` Y^l scales as |x|^l).
        normalize: project the points onto the unit sphere first (zero vectors give Y^0 only).
        normalization: "integral" (orthonormal on the sphere, e3nn's default), "component"
            (|Y^l|^2 = 2l+1) or "norm" (|Y^l| = 1), see the module docstring.

    Returns:
        (..., sum over the degrees of 2l+1), dtype and device of ``x``.
    """
    return _harmonics(parse_degrees(degrees)[0], x, normalize, normalization)


def spherical_harmonics_upto(lmax: int, vectors: torch.Tensor, normalize: bool = True, normalization: str = "component") -> torch.Tensor:
    """All degrees 0..lmax of ``vectors`` (..., 3) -> (..., (lmax+1)^2): the edge harmonics of an
    equivariant network, ``spherical_harmonics(range(lmax + 1), vectors, normalize, normalization)``
    with sciml's defaults (unit vectors, "component" normalization, Y^0 = 1)."""
    if isinstance(lmax, bool) or not isinstance(lmax, (int, np.integer)) or lmax < 0:
        raise ValueError(f"lmax must be an int >= 0, got {lmax!r}")
    return _harmonics(_check_ls(tuple(range(int(lmax) + 1))), vectors, normalize, normalization)


class SphericalHarmonics(nn.Module):
    """Module form of :func:`spherical_harmonics`: ``e3nn.o3.SphericalHarmonics``'s arguments.

    Args:
        irreps_out: the degrees, as in :func:`spherical_harmonics` (int, sequence or irreps).
        normalize: project inputs onto the unit sphere first.
        normalization: "integral" (default, as e3nn), "component" or "norm".
        irreps_in: "1o" (vectors, default) or "1e" (pseudovectors: every degree has even parity).

    Shapes: (..., 3) -> (..., ``irreps_out.dim``).
    """

    __e3nn_compile_mode__ = "trace"

    def __init__(self, irreps_out: Degrees, normalize: bool, normalization: str = "integral", irreps_in=None) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; use one of {NORMALIZATIONS}")
        self.ls, self.irreps_out, self.irreps_in = parse_degrees(irreps_out, irreps_in)
        # e3nn's attribute names, read by e3nn-based code (MACE reads ``_lmax``)
        self._ls_list, self._lmax = list(self.ls), max(self.ls)
        self._is_range_lmax = self._ls_list == list(range(self._lmax + 1))
        self.normalize = normalize
        self.normalization = normalization
        self.dim = self.irreps_out.dim
        recurrence_constants(max(self.ls), normalization)  # fit (and check) once, at construction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) -> (..., dim)."""
        if torch.jit.is_tracing():
            return traced_call(self, "_forward", x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _harmonics(self.ls, x, self.normalize, self.normalization)

    def extra_repr(self) -> str:
        return f"ls={list(self.ls)}, normalize={self.normalize}, normalization={self.normalization!r}"


"""Real spherical harmonics in e3nn's basis, by a three-term recurrence over rows.

Convention (identical to ``e3nn.o3.spherical_harmonics``): the polar axis is **y**; degree l has
2l+1 components ordered m = -l..l, concatenated over l (so lmax 2 gives 1 + 3 + 5 = 9 columns);
Y^1(r) is proportional to (x, y, z); Y^l is the degree-l homogeneous harmonic polynomial defined by
the Clebsch-Gordan recursion Y^l ∝ C(Y^{l-1} ⊗ Y^1) with e3nn's ``wigner_3j``, scaled so that
Y^l_{m=0}(+y) > 0. Normalizations, for unit vectors:

- ``component``: |Y^l|^2 = 2l + 1;
- ``norm``: |Y^l| = 1;
- ``integral``: ∫_{S^2} (Y^l_m)^2 = 1, i.e. ``component`` / sqrt(4π).

How it is computed: with T_{+m} + i T_{-m} = (z + i x)^m, every harmonic factorises as
Y^l_{±m} = P_{l,m}(y, r²) T_{±m}, so at fixed m the Legendre recurrence in l holds for Y itself:
Y^l_m = a y Y^{l-1}_m - b r² Y^{l-2}_m (|m| <= l-2), Y^l_{±(l-1)} = a' y Y^{l-1}_{±(l-1)} and
Y^l_{±l} = c T_{±l}. The constants (a, b, a', c per (l, m), normalization folded in) are fitted
once, in float64, to the Clebsch-Gordan recursion itself, so nothing here transcribes a formula
from a table; the fit is exact (checked when the constants are built). The recurrence runs on
rows (component-major, one row of N values per component, in chunks of points), which is fast on
CPU; one transpose at the end gives the (..., K) layout.

Gradients: dY^l/dr is a degree-(l-1) harmonic, so dL/dr = sum_l G^l A_l Y^{l-1} with matrices
A_l that are banded in this basis (fitted and checked the same way); the backward uses that
instead of replaying the recurrence. Higher derivatives (a loss on forces) are exact too: the
backward is itself differentiable.

Two implementations of the same recurrence and gradient:

- ``c`` (CPU, float32/float64): C source generated per (degrees, normalization, normalize,
  dtype) with the fitted constants as literals, compiled at run time (``sciml.ops.cbuild``) and
  run by the operators ``torch.ops.sciml.spherical_harmonics`` / ``spherical_harmonics_backward``
  (``sciml.ops.library``). Points are processed in blocks of one SIMD register's width (the
  recurrence runs across the block's points, so it vectorises), the block's rows are transposed
  in registers and written straight into the (N, K) output; blocks are split over
  ``torch.get_num_threads()`` OpenMP threads. The first backward (dL/dr from the A_l and the
  chain rule of the normalization) is C too; it recomputes the lower degrees from the points
  instead of storing them. A backward that must itself be differentiable (``create_graph=True``)
  recomputes the harmonics with the ``torch`` code and differentiates that.
- ``torch``: the recurrence on rows of plain tensor operations (any device and dtype, any order
  of derivatives), also the fallback when no C compiler works.

``SCIML_SH_BACKEND`` = "auto" (default: ``c`` where it applies and builds, else ``torch``), "c"
(error if it cannot be used) or "torch" selects one (the "harmonics" family of
:mod:`sciml.ops.backends`); it also applies to :mod:`sciml.ops.wigner`.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from e3nn import o3
from torch import nn

from sciml.ops import backends, library
from sciml.ops.irreps import parse_irreps
from sciml.ops.jit_trace import traced_call
from sciml.ops.cbuild import build_library, compiler
from sciml.ops.tracing import built_outside_tracing, is_tracing

NORMALIZATIONS = ("integral", "component", "norm")
MAX_L = 16  # the fit below is checked to 1e-9 relative up to here

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


@built_outside_tracing
def cg_spherical_harmonics(lmax: int, vectors: np.ndarray) -> List[np.ndarray]:
    """Reference harmonics from the Clebsch-Gordan recursion, float64 numpy (setup and tests only).

    Y^0 = 1, Y^1 = sqrt(3) r, Y^l = s_l * einsum(wigner_3j(l-1, 1, l), Y^{l-1}, r) with s_l > 0 chosen
    so that |Y^l(r)|^2 = (2l+1) |r|^{2l} ("component" normalization, homogeneous polynomials).

    Args:
        lmax: highest degree.
        vectors: (N, 3) points, not normalized.

    Returns:
        [Y^0 (N, 1), Y^1 (N, 3), ..., Y^lmax (N, 2 lmax + 1)].
    """
    from e3nn.o3 import wigner_3j  # setup-time only

    r = np.asarray(vectors, dtype=np.float64)
    out = [np.ones((len(r), 1)), math.sqrt(3.0) * r]
    # The scale is fixed on +y, where only m = 0 is non-zero.
    pole_prev = np.array([0.0, math.sqrt(3.0), 0.0])
    unit_y = np.array([0.0, 1.0, 0.0])
    for l in range(2, lmax + 1):
        cg = wigner_3j(l - 1, 1, l, dtype=torch.float64).numpy()
        pole = np.einsum("ijk,i,j->k", cg, pole_prev, unit_y)
        scale = math.sqrt(2 * l + 1) / pole[l]
        out.append(scale * np.einsum("ijk,ni,nj->nk", cg, out[-1], r))
        pole_prev = scale * pole
    return out[: lmax + 1]


def _complex_powers(x: np.ndarray, z: np.ndarray, lmax: int) -> Dict[int, np.ndarray]:
    """T_{+m} = Re (z + i x)^m, T_{-m} = Im (z + i x)^m, T_0 = 1 (float64)."""
    w = z + 1j * x
    table = {0: np.ones_like(x)}
    for m in range(1, lmax + 1):
        p = w**m
        table[m], table[-m] = p.real, p.imag
    return table


def _lstsq(columns: List[np.ndarray], target: np.ndarray, what: str) -> np.ndarray:
    basis = np.stack(columns, axis=1)
    coef, *_ = np.linalg.lstsq(basis, target, rcond=None)
    residual = np.abs(basis @ coef - target).max()
    if residual > 1e-9 * max(1.0, np.abs(target).max()):
        raise RuntimeError(
            f"spherical-harmonic recurrence does not fit e3nn's basis at {what} (residual {residual:.2e})"
        )
    return coef


@functools.lru_cache(maxsize=None)
def _recurrence_constants(lmax: int, normalization: str) -> Tuple[Tuple[np.ndarray, ...], ...]:
    """Per degree l: (c (2,), a_end (2,), a_mid (2l-3,), b_mid (2l-3,)) in float64.

    Rows of Y^l, m = -l..l, are: c[0] T_{-l}; a_end[0] y Y^{l-1}_{-(l-1)}; a_mid y Y^{l-1}_m -
    b_mid r² Y^{l-2}_m for |m| <= l-2; a_end[1] y Y^{l-1}_{l-1}; c[1] T_l. (Using y Y^{l-1} rather
    than y T for the ±(l-1) rows lets one product serve all rows.)
    """
    rng = np.random.default_rng(1234)
    pts = rng.normal(size=(64, 3)) * rng.uniform(0.5, 1.5, size=(64, 1))  # not unit: homogeneous fit
    ref = cg_spherical_harmonics(lmax, pts)
    scale = [_normalization_factor(l, normalization) for l in range(lmax + 1)]
    ref = [s * y for s, y in zip(scale, ref)]
    x, y, z = pts.T
    r2 = (pts**2).sum(1)
    t = _complex_powers(x, z, lmax)
    constants = []
    for l in range(lmax + 1):
        if l == 0:
            constants.append((np.array([ref[0][0, 0]]),))
            continue
        c = np.array(
            [_lstsq([t[-l]], ref[l][:, 0], f"l={l} m={-l}")[0], _lstsq([t[l]], ref[l][:, -1], f"l={l} m={l}")[0]]
        )
        prev = ref[l - 1]
        a_end = np.array(
            [
                _lstsq([y * prev[:, 0]], ref[l][:, 1], f"l={l} m={-(l - 1)}")[0],
                _lstsq([y * prev[:, -1]], ref[l][:, -2], f"l={l} m={l - 1}")[0],
            ]
        )
        a_mid, b_mid = [], []
        for m in range(-(l - 2), l - 1):
            a, b = _lstsq([y * prev[:, m + l - 1], -r2 * ref[l - 2][:, m + l - 2]], ref[l][:, m + l], f"l={l} m={m}")
            a_mid.append(a)
            b_mid.append(b)
        constants.append((c, a_end, np.array(a_mid), np.array(b_mid)))
    return tuple(constants)


def _normalization_factor(l: int, normalization: str) -> float:
    if normalization == "component":
        return 1.0
    if normalization == "norm":
        return 1.0 / math.sqrt(2 * l + 1)
    return 1.0 / math.sqrt(4 * math.pi)


@functools.lru_cache(maxsize=64)
@built_outside_tracing
def _torch_constants(lmax: int, normalization: str, dtype: torch.dtype, device: torch.device):
    """The recurrence constants as tensors, columns (rows, 1) for broadcasting over N."""
    out = []
    for l, consts in enumerate(_recurrence_constants(lmax, normalization)):
        if l == 0:
            out.append(float(consts[0][0]))
        elif l == 1:
            c, a_end = consts[0], consts[1]
            out.append((torch.tensor(c, dtype=dtype, device=device).view(2, 1), float(a_end[0])))
        else:
            out.append(tuple(torch.tensor(v, dtype=dtype, device=device).view(-1, 1) for v in consts))
    return out


def _harmonic_rows(lmax: int, rows: torch.Tensor, normalization: str) -> List[torch.Tensor]:
    """Y^0..Y^lmax as row blocks (2l+1, N) of the point rows ``rows`` = (x, y, z) (3, N)."""
    consts = _torch_constants(lmax, normalization, rows.dtype, rows.device)
    x, y, z = rows[0], rows[1], rows[2]
    out = [torch.full_like(y, consts[0]).unsqueeze(0)]
    if lmax == 0:
        return out
    # (T_{-m}, T_{+m}) pairs for m = 1..lmax by complex multiplication by (z + i x).
    cos, sin = z, x
    pairs = [torch.stack([sin, cos])]
    for _ in range(2, lmax + 1):
        cos, sin = z * cos - x * sin, x * cos + z * sin
        pairs.append(torch.stack([sin, cos]))
    r2 = None
    for l in range(1, lmax + 1):
        if l == 1:
            c, a0 = consts[1]
            ends = pairs[0] * c
            out.append(torch.cat([ends[:1], (y * (a0 * consts[0])).unsqueeze(0), ends[1:]]))
            continue
        if r2 is None:
            # r² of the (possibly normalized) points keeps the polynomials homogeneous, so zero
            # vectors give Y^l = 0 for l > 0 as in e3nn.
            r2 = rows.square().sum(0)
        c, a_end, a_mid, b_mid = consts[l]
        prev = y * out[l - 1]
        mid = torch.addcmul(a_mid * prev[1:-1], b_mid, r2 * out[l - 2], value=-1.0)
        ends = pairs[l - 1] * c
        out.append(torch.cat([ends[:1], prev[:1] * a_end[0], mid, prev[-1:] * a_end[1], ends[1:]]))
    return out


@functools.lru_cache(maxsize=None)
def _derivative_matrices(lmax: int, normalization: str) -> Tuple[np.ndarray, ...]:
    """A_l (3 (2l-1), 2l+1) with dY^l_i/dr_k = sum_j A_l[k (2l-1) + j, i] Y^{l-1}_j, l = 1..lmax.

    The gradient of a degree-l harmonic is a degree-(l-1) harmonic, so it lies in the span of
    Y^{l-1}; the matrices are fitted (float64) to the recurrence's own polynomials, whose exact
    derivatives are taken by autograd.
    """
    rng = np.random.default_rng(4321)
    out = []
    with torch.enable_grad():  # may be first called inside a backward pass
        pts = torch.tensor(rng.normal(size=(64, 3)), dtype=torch.float64, requires_grad=True)
        blocks = _harmonic_rows(lmax, pts.t(), normalization)
        for l in range(1, lmax + 1):
            prev = blocks[l - 1].detach().numpy()  # (2l-1, P)
            a = np.zeros((3, 2 * l - 1, 2 * l + 1))
            for i in range(2 * l + 1):
                (grad,) = torch.autograd.grad(blocks[l][i].sum(), pts, retain_graph=True)
                for k in range(3):
                    a[k, :, i] = _lstsq(list(prev), grad[:, k].numpy(), f"dY^{l}_{i}/dr_{k}")
            out.append(a.reshape(3 * (2 * l - 1), 2 * l + 1))
    return tuple(out)


class _GradientTables(NamedTuple):
    """Row gathers and weights of the banded gradient (see :func:`_gradient_tables`)."""

    g0: torch.Tensor  # rows of the output gradient G^l_i, i = m + l, paired with ...
    g1: torch.Tensor
    g2: torch.Tensor
    prev: torch.Tensor  # ... rows Y^{l-1}_j among those of degrees 0..lmax-1 (j aligned with g0)
    flip: torch.Tensor  # ... and the same rows with m -> -m
    w_x0: torch.Tensor
    w_x2: torch.Tensor
    w_y1: torch.Tensor
    w_z0: torch.Tensor
    w_z2: torch.Tensor


@functools.lru_cache(maxsize=64)
@built_outside_tracing
def _gradient_tables(
    ls: Tuple[int, ...], normalization: str, dtype: torch.dtype, device: torch.device
) -> _GradientTables:
    """Gather indices and weights for dL/dr from dL/dY, for the output degrees ``ls``.

    The matrices A_l are banded in e3nn's basis (checked here): with j the index of Y^{l-1} and
    i = j + s the index of Y^l,
    dY^l_i/dy couples only s = 1 (same m), dY^l_i/dz only s = 0 and s = 2 (m -> m -+ 1), and
    dY^l_i/dx only the flipped rows (m -> -(m -+ 1)) at s = 0 and s = 2. So the gradient is five
    row-wise products summed over rows, with no dense matrix product.
    """
    lmax = max(ls)
    mats = _derivative_matrices(lmax, normalization)
    cols: Dict[str, List] = {k: [] for k in _GradientTables._fields}
    offset = 0
    for l in ls:
        width = 2 * l + 1
        if l > 0:
            a = mats[l - 1].reshape(3, 2 * l - 1, 2 * l + 1)
            j = np.arange(2 * l - 1)
            flipped = 2 * l - 2 - j
            band = np.zeros_like(a, dtype=bool)
            band[0, flipped, j] = band[0, flipped, j + 2] = True
            band[1, j, j + 1] = True
            band[2, j, j] = band[2, j, j + 2] = True
            if np.abs(a[~band]).max(initial=0.0) > 1e-9 * np.abs(a).max():
                raise RuntimeError(f"gradient of Y^{l} is not banded in the expected way")
            cols["g0"].append(offset + j)
            cols["g1"].append(offset + j + 1)
            cols["g2"].append(offset + j + 2)
            cols["prev"].append((l - 1) ** 2 + j)
            cols["flip"].append((l - 1) ** 2 + flipped)
            cols["w_x0"].append(a[0, flipped, j])
            cols["w_x2"].append(a[0, flipped, j + 2])
            cols["w_y1"].append(a[1, j, j + 1])
            cols["w_z0"].append(a[2, j, j])
            cols["w_z2"].append(a[2, j, j + 2])
        offset += width
    out = {}
    for name, parts in cols.items():
        if name.startswith("w_"):
            out[name] = torch.tensor(np.concatenate(parts), dtype=dtype, device=device).view(-1, 1)
        else:
            out[name] = torch.tensor(np.concatenate(parts), dtype=torch.long, device=device)
    return _GradientTables(**out)


def _selected_rows(rows: torch.Tensor, ls: Tuple[int, ...], normalization: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(all degrees 0..max(ls) (K_full, N), the degrees ``ls`` (K, N)) of point rows (3, N)."""
    blocks = _harmonic_rows(max(ls), rows, normalization)
    full = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
    picked = full if list(ls) == list(range(len(blocks))) else torch.cat([blocks[l] for l in ls])
    return full, picked


def _gradient_of_rows(grad_rows: torch.Tensor, full: torch.Tensor, t: _GradientTables) -> torch.Tensor:
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


# ---------------------------------------------------------------------------------------------
# The compiled C path (see the module docstring). The generators below are shared with the
# Wigner-D kernel (``sciml.ops.wigner``), which evaluates the same recurrence at rotated points.

def use_compiled(tensor: torch.Tensor) -> bool:
    """Whether the compiled kernels run on ``tensor``: the "harmonics" choice of
    :mod:`sciml.ops.backends` (``SCIML_SH_BACKEND``) is "c" for its device and dtype. Asking for
    "c" where it cannot run raises :class:`~sciml.ops.backends.BackendUnavailable`."""
    return backends.resolve("harmonics", None, tensor.device, tensor.dtype) == "c" and tensor.dtype in backends.KERNEL_DTYPES


def _why_not_compiled(device: torch.device) -> str:
    if device.type != "cpu":
        return "the compiled harmonics run on CPU tensors"
    try:
        compiler()
    except RuntimeError as error:
        return str(error)
    return library.unavailable_reason()


backends.register("harmonics", "c", _why_not_compiled)


_built: Dict[tuple, Tuple[bool, str]] = {}


@built_outside_tracing
def build_kernels(key: tuple, make_source: Callable[[], str], names: Sequence[str]) -> Optional[str]:
    """The functions ``names`` of the generated source, compiled once per ``key``, as the
    operators' ``kernels`` argument ("path:symbol" lines).

    Returns None when the build fails (no compiler, a compiler error, or no operator library; the
    reason is kept and the build is not retried), except under ``SCIML_SH_BACKEND=c``, which raises
    RuntimeError.
    """
    if key not in _built:
        try:
            if not library.available():
                raise RuntimeError(library.unavailable_reason())
            path = build_library(make_source())
            _built[key] = (True, "\n".join(f"{path}:{name}" for name in names))
        except (RuntimeError, OSError) as error:
            _built[key] = (False, str(error))
    built, result = _built[key]
    if not built:
        if backends.requested("harmonics") == "c":
            raise RuntimeError(f"the compiled spherical-harmonics kernel is unavailable: {result}")
        return None
    return result


def c_real(dtype: torch.dtype) -> str:
    """The C type of a float32/float64 tensor."""
    return "float" if dtype == torch.float32 else "double"


def _c_literal(value: float, real: str) -> str:
    text = repr(float(value))
    return f"{text}f" if real == "float" else text


def c_prelude(real: str) -> str:
    """Headers, ``real``, and the SIMD width of the target (``LANES`` values of ``real`` in a
    ``vreal``) with ``transpose(vreal r[LANES])``, an in-register transpose of LANES x LANES.

    The width (``VBYTES``) is read from the compiler's target macros (the kernels are built for the
    host CPU) unless the source defines it first (the tests check every width that way).
    The transpose swaps one bit of the row index with the same bit of the column index per round,
    each round one two-register shuffle per pair of rows (``vpermt2ps`` with AVX-512), written
    with the GCC (>= 12) and clang builtin, or GCC's older one.
    """
    size = 4 if real == "float" else 8
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
        "#include <stdlib.h>",
        "#include <string.h>",
        f"typedef {real} real;",
        "#ifndef VBYTES",
        "#if defined(__AVX512F__)",
        "#define VBYTES 64",
        "#elif defined(__AVX__)",
        "#define VBYTES 32",
        "#else",
        "#define VBYTES 16",
        "#endif",
        "#endif",
        f"#define LANES (VBYTES / {size})",
        "typedef real vreal __attribute__((vector_size(VBYTES)));",
        f"typedef int{8 * size}_t vindex __attribute__((vector_size(VBYTES)));",
        "#if defined(__clang__) || __GNUC__ >= 12",
        "#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)",
        "#else",
        "#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (vindex){__VA_ARGS__})",
        "#endif",
    ]
    for number, lanes in enumerate((64 // size, 32 // size, 16 // size)):
        lines.append(f"#{'if' if number == 0 else 'elif'} LANES == {lanes}")
        lines.append("static inline void transpose(vreal r[LANES]) {")
        for bit in range(lanes.bit_length() - 1):
            h = 1 << bit
            low = [c if not c & h else lanes + (c ^ h) for c in range(lanes)]
            high = [c | h if not c & h else lanes + c for c in range(lanes)]
            for i in range(lanes):
                if not i & h:
                    lines.append(
                        f"  {{ const vreal a = r[{i}], b = r[{i | h}];"
                        f" r[{i}] = SHUFFLE(a, b, {', '.join(map(str, low))});"
                        f" r[{i | h}] = SHUFFLE(a, b, {', '.join(map(str, high))}); }}"
                    )
        lines.append("}")
    lines.append("#endif")
    return "\n".join(lines) + "\n"


def c_harmonics_statements(lmax: int, upto: int, normalization: str, real: str) -> List[str]:
    """C statements declaring ``Y0`` .. ``Y{(upto+1)^2 - 1}`` (degrees 0..upto, e3nn's order) of the
    point ``x, y, z`` (type ``real``): the recurrence of :func:`_harmonic_rows` with the constants of
    ``_recurrence_constants(lmax, normalization)`` as literals. Also uses ``r2``, ``cos_m``, ``sin_m``."""
    consts = _recurrence_constants(lmax, normalization)
    lit = functools.partial(_c_literal, real=real)
    y0 = consts[0][0][0]
    out = [f"const real Y0 = {lit(y0)};"]
    if upto >= 1:
        c, a_end = consts[1][0], consts[1][1]
        out += [
            f"const real Y1 = {lit(c[0])} * x;",
            f"const real Y2 = {lit(a_end[0] * y0)} * y;",
            f"const real Y3 = {lit(c[1])} * z;",
        ]
    if upto >= 2:
        # T_{+m} + i T_{-m} = (z + i x)^m, from m = 1
        out += ["real cos_m = z, sin_m = x;", "const real r2 = x * x + y * y + z * z;"]
    for l in range(2, upto + 1):
        c, a_end, a_mid, b_mid = consts[l]
        cur, prev, prev2 = l * l, (l - 1) ** 2, (l - 2) ** 2
        out.append("{ const real t = z * cos_m - x * sin_m; sin_m = x * cos_m + z * sin_m; cos_m = t; }")
        out.append(f"const real Y{cur} = {lit(c[0])} * sin_m;")
        out.append(f"const real Y{cur + 1} = {lit(a_end[0])} * (y * Y{prev});")
        for i in range(2 * l - 3):
            out.append(
                f"const real Y{cur + 2 + i} = {lit(a_mid[i])} * (y * Y{prev + 1 + i})"
                f" - {lit(b_mid[i])} * (r2 * Y{prev2 + i});"
            )
        out.append(f"const real Y{cur + 2 * l - 1} = {lit(a_end[1])} * (y * Y{prev + 2 * l - 2});")
        out.append(f"const real Y{cur + 2 * l} = {lit(c[1])} * cos_m;")
    return out


def c_gradient_statements(ls: Tuple[int, ...], normalization: str, real: str, grad: Callable[[int], str]) -> List[str]:
    """C statements adding dL/d(x, y, z) to ``gx, gy, gz`` (declared by the caller) from dL/dY of the
    output columns (``grad(j)``: C expression of column j's gradient) and ``Y0`` .. ``Y{lmax^2 - 1}``
    (:func:`c_harmonics_statements` up to lmax - 1): the banded A_l of :func:`_gradient_tables`,
    zero weights dropped."""
    t = _gradient_tables(ls, normalization, torch.float64, torch.device("cpu"))
    lit = functools.partial(_c_literal, real=real)
    columns = sorted(set(t.g0.tolist()) | set(t.g1.tolist()) | set(t.g2.tolist()))
    out = [f"const real G{j} = {grad(j)};" for j in columns]
    weights = {name: getattr(t, name).view(-1).tolist() for name in ("w_x0", "w_x2", "w_y1", "w_z0", "w_z2")}
    tiny = 1e-12 * max((abs(w) for ws in weights.values() for w in ws), default=0.0)

    def combination(*pairs: Tuple[float, int]) -> str:
        return " + ".join(f"{lit(w)} * G{j}" for w, j in pairs if abs(w) > tiny)

    for r, (g0, g1, g2, prev, flip) in enumerate(
        zip(t.g0.tolist(), t.g1.tolist(), t.g2.tolist(), t.prev.tolist(), t.flip.tolist())
    ):
        for target, terms, y in (
            ("gx", combination((weights["w_x0"][r], g0), (weights["w_x2"][r], g2)), flip),
            ("gy", combination((weights["w_y1"][r], g1)), prev),
            ("gz", combination((weights["w_z0"][r], g0), (weights["w_z2"][r], g2)), prev),
        ):
            if terms:
                out.append(f"{target} += ({terms}) * Y{y};")
    return out


def c_tile_functions(width: str, name: str) -> str:
    """C for rows of ``width`` (a constant expression) values per item, LANES items per block:
    ``{name}_t`` (rows[column][item], padded to whole tiles), ``store_{name}`` (rows ->
    out[item * width + column] for ``count`` items) and ``load_{name}`` (the inverse, zero beyond
    ``count`` and width), both by LANES x LANES tiles transposed in registers. Copies have
    constant sizes, so they compile to vector moves."""
    return f"""
#define {name.upper()}_TILES (({width} + LANES - 1) / LANES)
#define {name.upper()}_LAST ({width} - ({name.upper()}_TILES - 1) * LANES)
typedef real {name}_t[{name.upper()}_TILES * LANES][LANES];

static inline void store_{name}({name}_t rows, real* restrict out, int count) {{
  for (int t = 0; t < {name.upper()}_TILES; t++) {{
    vreal r[LANES];
    for (int i = 0; i < LANES; i++) memcpy(&r[i], rows[t * LANES + i], sizeof(vreal));
    transpose(r);
    real* o = out + t * LANES;
    if (t < {name.upper()}_TILES - 1)
      for (int b = 0; b < count; b++) memcpy(o + b * ({width}), &r[b], sizeof(vreal));
    else
      for (int b = 0; b < count; b++) memcpy(o + b * ({width}), &r[b], {name.upper()}_LAST * sizeof(real));
  }}
}}

static inline void load_{name}(const real* restrict in, int count, {name}_t rows) {{
  for (int t = 0; t < {name.upper()}_TILES; t++) {{
    vreal r[LANES];
    const real* g = in + t * LANES;
    for (int b = 0; b < LANES; b++) r[b] = (vreal){{0}};
    if (t < {name.upper()}_TILES - 1)
      for (int b = 0; b < count; b++) memcpy(&r[b], g + b * ({width}), sizeof(vreal));
    else
      for (int b = 0; b < count; b++) memcpy(&r[b], g + b * ({width}), {name.upper()}_LAST * sizeof(real));
    transpose(r);
    for (int i = 0; i < LANES; i++) memcpy(rows[t * LANES + i], &r[i], sizeof(vreal));
  }}
}}
"""


def _c_source(ls: Tuple[int, ...], normalization: str, normalize: bool, real: str) -> str:
    """``sciml_sh_forward`` and ``sciml_sh_backward`` for points (N, 3) -> harmonics (N, K), row-major.

    Each OpenMP thread takes blocks of LANES points: the points are loaded (and normalized) one by
    one, the recurrence runs across the block's points into rows ``rows[column][point]`` (one
    vector per row), and tiles of LANES rows are transposed in registers and stored as the
    points' output rows. The backward loads the gradient the same way (transposed), recomputes
    the degrees below lmax and applies the A_l and the normalization's chain rule.
    """
    lmax = max(ls)
    width = sum(2 * l + 1 for l in ls)
    columns = [i for l in ls for i in range(l * l, (l + 1) ** 2)]
    sqrt = "sqrtf" if real == "float" else "sqrt"
    forward = c_harmonics_statements(lmax, lmax, normalization, real) + [
        f"rows[{j}][b] = Y{i};" for j, i in enumerate(columns)
    ]
    backward = c_harmonics_statements(lmax, lmax - 1, normalization, real) if lmax > 0 else []
    backward += ["real gx = 0, gy = 0, gz = 0;"]
    backward += c_gradient_statements(ls, normalization, real, lambda j: f"rows[{j}][b]") if lmax > 0 else []
    if normalize:
        # d(v/|v|)/dv = (1 - u u^T) / |v|; below the clamp |v| is the constant 1e-12.
        backward += [
            "const real along = project[b] * (gx * x + gy * y + gz * z);",
            "gx = scale[b] * (gx - along * x); gy = scale[b] * (gy - along * y); gz = scale[b] * (gz - along * z);",
        ]
    backward += ["out_x[b] = gx; out_y[b] = gy; out_z[b] = gz;"]

    def body(statements: List[str]) -> str:
        return "\n".join(f"      {s}" for s in statements)

    return c_prelude(real) + f"""
#define NORMALIZE {int(normalize)}
#define K {width}

/* Points start.. of (N, 3) `in` as lanes (the block's tail repeats its last point), projected
   onto the unit sphere as torch.nn.functional.normalize does: v / max(|v|, 1e-12); `scale` and
   `project` carry that map's derivative. */
static inline void load_points(const real* restrict in, int count, real* px, real* py, real* pz,
                               real* scale, real* project) {{
  for (int b = 0; b < LANES; b++) {{
    const real* v = in + 3 * (b < count ? b : count - 1);
    real x = v[0], y = v[1], z = v[2];
#if NORMALIZE
    const real norm = {sqrt}(x * x + y * y + z * z);
    const int clamped = !(norm >= (real)1e-12);
    const real d = clamped ? (real)1e-12 : norm;
    x /= d; y /= d; z /= d;
    scale[b] = (real)1 / d;
    project[b] = clamped ? (real)0 : (real)1;
#endif
    px[b] = x; py[b] = y; pz[b] = z;
  }}
}}

{c_tile_functions('K', 'rows')}
void sciml_sh_forward(int64_t n, const real* restrict in, real* restrict out, int num_threads) {{
  const int64_t blocks = (n + LANES - 1) / LANES;
#pragma omp parallel num_threads(num_threads) if (blocks > 16)
  {{
    real px[LANES], py[LANES], pz[LANES], scale[LANES], project[LANES];
    rows_t rows __attribute__((aligned(VBYTES)));
    memset(rows, 0, sizeof(rows_t));  /* the padding rows of the last tile are transposed too */
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {{
      const int64_t start = block * LANES;
      const int count = n - start < LANES ? (int)(n - start) : LANES;
      load_points(in + 3 * start, count, px, py, pz, scale, project);
#pragma omp simd
      for (int b = 0; b < LANES; b++) {{
        const real x = px[b], y = py[b], z = pz[b];
{body(forward)}
      }}
      store_rows(rows, out + start * K, count);
    }}
  }}
}}

void sciml_sh_backward(int64_t n, const real* restrict in, const real* restrict grad, real* restrict grad_in,
                       int num_threads) {{
  const int64_t blocks = (n + LANES - 1) / LANES;
#pragma omp parallel num_threads(num_threads) if (blocks > 16)
  {{
    real px[LANES], py[LANES], pz[LANES], scale[LANES], project[LANES];
    real out_x[LANES], out_y[LANES], out_z[LANES];
    rows_t rows __attribute__((aligned(VBYTES)));
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {{
      const int64_t start = block * LANES;
      const int count = n - start < LANES ? (int)(n - start) : LANES;
      load_points(in + 3 * start, count, px, py, pz, scale, project);
      load_rows(grad + start * K, count, rows);
#pragma omp simd
      for (int b = 0; b < LANES; b++) {{
        const real x = px[b], y = py[b], z = pz[b];
{body(backward)}
      }}
      for (int b = 0; b < count; b++) {{
        grad_in[3 * (start + b)] = out_x[b];
        grad_in[3 * (start + b) + 1] = out_y[b];
        grad_in[3 * (start + b) + 2] = out_z[b];
      }}
    }}
  }}
}}
"""


def _compiled_kernels(ls: Tuple[int, ...], normalization: str, normalize: bool, dtype: torch.dtype) -> Optional[str]:
    real = c_real(dtype)
    return build_kernels(
        ("harmonics", ls, normalization, normalize, real),
        lambda: _c_source(ls, normalization, normalize, real),
        ("sciml_sh_forward", "sciml_sh_backward"),
    )


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
    kernels = _compiled_kernels(ls, normalization, normalize, points.dtype) if use_compiled(points) else None
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
        _recurrence_constants(max(self.ls), normalization)  # fit (and check) once, at construction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3) -> (..., dim)."""
        if torch.jit.is_tracing():
            return traced_call(self, "_forward", x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _harmonics(self.ls, x, self.normalize, self.normalization)

    def extra_repr(self) -> str:
        return f"ls={list(self.ls)}, normalize={self.normalize}, normalization={self.normalization!r}"

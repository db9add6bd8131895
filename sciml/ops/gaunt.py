"""Gaunt tensor product: the product of two functions on the sphere, in spherical-harmonic coefficients.

Luo, Chen & Krishnapriyan, "Enabling efficient equivariant operations in the Fourier basis via Gaunt
tensor products" (ICLR 2024, arXiv 2401.10216). A vector of real spherical-harmonic coefficients
``x[l*l + l + m]`` (l = 0..L, m = -l..l) is the function ``f(r) = sum_lm x_lm Y_lm(r)`` on the unit
sphere. The Gaunt tensor product of two such vectors is the SH expansion, up to degree ``L_out``, of
the pointwise product ``f1 * f2``:

    out_{l3 m3} = sum_{l1 m1 l2 m2} G(l1 m1, l2 m2, l3 m3) x1_{l1 m1} x2_{l2 m2},
    G(l1 m1, l2 m2, l3 m3) = integral over the sphere of Y_{l1 m1} Y_{l2 m2} Y_{l3 m3} dOmega.

Conventions (shared with e3nn, so coefficients can be passed to and from e3nn unchanged):

- Basis and order: e3nn's real spherical harmonics (``e3nn.o3.spherical_harmonics``; the tables are
  built from sciml's, :mod:`sciml.ops.spherical_harmonics`, so degrees are 0..16), polar axis y,
  m = -l..l inside each degree, degrees in increasing order ("l-major"):
  ``Y_lm(r) = S_m(phi) P_l^|m|(cos theta)`` for ``r = (sin theta sin phi, cos theta, sin theta cos phi)``,
  ``S_m = sqrt(2) sin(|m| phi)`` (m < 0), ``1`` (m = 0), ``sqrt(2) cos(m phi)`` (m > 0), ``P`` the
  associated Legendre functions without the Condon-Shortley phase.
- ``normalization="integral"`` (e3nn's default): orthonormal, ``int Y_lm Y_l'm' dOmega = delta``.
  ``normalization="component"``: ``Y_lm`` times ``sqrt(4 pi)`` (``Y_00 = 1``; MACE's edge
  attributes). In both cases the output holds the coefficients, in the same normalization, of the
  product function; for "component" that is ``sqrt(4 pi)`` times the contraction with the
  integral-normalized Gaunt coefficients.

Three ways to compute the same product (``method``), all exact up to rounding:

- ``"fourier"``, the paper's algorithm: each real SH, continued from theta in [0, pi] to the torus
  theta, phi in [0, 2 pi), is a trigonometric polynomial ``sum_{|u|,|v|<=l} A[u, v] exp(i(u theta +
  v phi))``; the sparse change of basis (``Y_lm`` only touches ``v = +-m``) is applied block by
  block per ``|m|``; the two spectra are multiplied by zero-padded FFT convolution (inverse 2D FFT,
  pointwise product, forward 2D FFT, r2c/c2r along phi; torus grid ``N_u >= 2(L1+L2)+1``,
  ``N_v > L1+L2+L_out``, so nothing wraps around where it is read); the product spectrum is
  projected onto ``Y_lm`` (degrees <= L_out) with the closed form of
  ``int_0^pi exp(i k theta) sin theta dtheta``. O(L^3) per function.
- ``"grid"``: the same product on a Gauss-Legendre (in cos theta) x uniform (in phi) sphere grid
  that integrates the degree ``L1+L2+L_out`` integrand exactly: three GEMMs (SH -> grid twice,
  weighted grid -> SH), O(L^4) per function but much faster than small FFTs on a CPU for the
  degrees used in practice (about 2.6x fewer points than the torus grid, GEMM speed).
- ``"dense"``: contraction with the Gaunt tensor, O(L^6); when ``x2`` is shared by all channels
  (edge spherical harmonics) it is contracted with the tensor once per row, then one batched GEMM
  per row, the fastest at small degrees.

``"auto"`` picks among them (``select_method``). Large batches are evaluated in blocks along dim 0
(small intermediates: 3-4x faster on CPU at 10^5 rows). ``sciml/bench/gaunt.py`` times the layer
against the e3nn tensor product that computes the same thing.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, Literal, Optional, Tuple

import numpy as np
import torch
from torch import nn

from sciml.ops.sh_recurrence import MAX_L
from sciml.ops.spherical_harmonics import torch_harmonics

Normalization = Literal["integral", "component"]
Method = Literal["auto", "fourier", "grid", "dense"]
WeightMode = Literal["channel", "degree", "none"]

NORMALIZATIONS = ("integral", "component")
METHODS = ("auto", "fourier", "grid", "dense")
WEIGHT_MODES = ("channel", "degree", "none")

# Table entries below this become exact zeros (the selection rules' zeros): the float64 rounding
# noise of the constructions stays below 1e-14 for degrees up to 16 (the harmonics' range), far
# below the smallest true entries.
_ZERO = 1e-13


# ---------------------------------------------------------------------------------------------
# checks and small helpers
# ---------------------------------------------------------------------------------------------


def _check_degree(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value}")
    return int(value)


def _check_choice(name: str, value: object, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; use one of {choices}")
    return value  # type: ignore[return-value]


def num_coefficients(lmax: int) -> int:
    """Number of real SH coefficients of degrees 0..lmax: ``(lmax + 1)**2``."""
    return (_check_degree("lmax", lmax) + 1) ** 2


def _is_square_spectrum(s: torch.Tensor) -> bool:
    """Complex (..., 2D+1, 2D+1)."""
    return s.is_complex() and s.ndim >= 2 and s.shape[-1] == s.shape[-2] and s.shape[-1] % 2 == 1


def _degree_from_size(name: str, size: int) -> int:
    lmax = math.isqrt(size) - 1
    if size < 1 or (lmax + 1) ** 2 != size:
        raise ValueError(f"{name} has {size} SH coefficients, which is not (lmax+1)**2 for any lmax")
    return lmax


def _degrees(lmax: int) -> np.ndarray:
    """Degree l of each coefficient index l*l + l + m, shape ((lmax+1)**2,)."""
    return np.repeat(np.arange(lmax + 1), 2 * np.arange(lmax + 1) + 1)


def _orders(lmax: int) -> np.ndarray:
    """Order m of each coefficient index, shape ((lmax+1)**2,)."""
    return np.concatenate([np.arange(-l, l + 1) for l in range(lmax + 1)])


def _nice_fft_size(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (fast pocketfft sizes)."""
    while True:
        k = n
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return n
        n += 1


# ---------------------------------------------------------------------------------------------
# real spherical harmonics at angles (float64, numpy; used to build tables) and the quadrature
# ---------------------------------------------------------------------------------------------


def _real_sh(lmax: int, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """e3nn's integral-normalized real SH of degrees 0..lmax at angles (theta, phi) (radians), shape
    ``broadcast + ((lmax+1)**2,)``, float64: sciml's spherical harmonics at
    ``(sin theta sin phi, cos theta, sin theta cos phi)``.

    The harmonics are evaluated as polynomials of that point, so a negative ``sin theta`` (theta in
    (pi, 2 pi) on the torus) continues them as trigonometric polynomials.
    """
    if lmax > MAX_L:
        raise ValueError(f"Gaunt products take degrees 0..{MAX_L} (those of the spherical harmonics), got {lmax}")
    theta, phi = np.broadcast_arrays(np.asarray(theta, float), np.asarray(phi, float))
    sin_t = np.sin(theta)
    points = torch.from_numpy(np.stack([sin_t * np.sin(phi), np.cos(theta), sin_t * np.cos(phi)], axis=-1).reshape(-1, 3))
    values = torch_harmonics(points, tuple(range(lmax + 1)), "integral", normalize=False)
    return values.numpy().reshape(theta.shape + (-1,))


def _sphere_quadrature(degree: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes (theta, phi) and weights exact for polynomials of total degree <= ``degree`` on S^2.

    Gauss-Legendre in cos(theta) with ceil((degree+1)/2) nodes times ``degree + 1`` uniform phi;
    returns flat arrays of length ``n_theta * n_phi``; the weights sum to 4 pi.
    """
    n_theta, n_phi = degree // 2 + 1, degree + 1
    z, w = np.polynomial.legendre.leggauss(n_theta)
    phi = 2 * math.pi * np.arange(n_phi) / n_phi
    theta = np.repeat(np.arccos(z), n_phi)
    weights = np.repeat(w, n_phi) * (2 * math.pi / n_phi)
    return theta, np.tile(phi, n_theta), weights


# ---------------------------------------------------------------------------------------------
# Gaunt coefficients
# ---------------------------------------------------------------------------------------------


@functools.cache
def _gaunt_table(lmax1: int, lmax2: int, lmax3: int) -> np.ndarray:
    """Integral-normalized Gaunt tensor, float64 (n1, n2, n3), exact quadrature, read-only."""
    theta, phi, w = _sphere_quadrature(lmax1 + lmax2 + lmax3)
    y1, y2, y3 = (_real_sh(l, theta, phi) for l in (lmax1, lmax2, lmax3))
    table = np.einsum("q,qi,qj,qk->ijk", w, y1, y2, y3, optimize=True)
    table[np.abs(table) < _ZERO] = 0.0
    table.setflags(write=False)
    return table


def gaunt_coefficients(
    lmax1: int,
    lmax2: int,
    lmax_out: int,
    *,
    normalization: Normalization = "integral",
    dtype: torch.dtype = torch.float64,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Gaunt coefficients ``G[i, j, k] = int Y_i Y_j Y_k dOmega`` of e3nn's real SH, all degrees.

    Returns a dense tensor of shape ``((lmax1+1)**2, (lmax2+1)**2, (lmax_out+1)**2)``, indexed by
    e3nn's flat ``l*l + l + m``. Computed once (cached) in float64 by Gauss-Legendre x uniform
    quadrature that is exact for the degree ``lmax1+lmax2+lmax_out`` integrand (error ~1e-16);
    entries that vanish by the selection rules (l1+l2+l3 odd, triangle rule, the m rules) are exact
    zeros. ``normalization="component"`` uses ``sqrt(4 pi) Y`` and multiplies every entry by
    ``(4 pi)**1.5``. A block ``G[l1, l2, l3]`` (integral) equals ``c * e3nn.o3.wigner_3j(l1, l2, l3)``
    with ``c = sqrt((2l1+1)(2l2+1)(2l3+1)/(4 pi)) |(l1 l2 l3; 0 0 0)|``, zero when l1+l2+l3 is odd
    (the real basis is a unitary change from the complex one, where Gaunt = that factor times the
    3j symbol, and e3nn's 3j tensors have unit norm; e3nn's sign convention makes c positive).
    """
    lmax1, lmax2 = _check_degree("lmax1", lmax1), _check_degree("lmax2", lmax2)
    lmax_out = _check_degree("lmax_out", lmax_out)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    table = torch.tensor(_gaunt_table(lmax1, lmax2, lmax_out), dtype=torch.float64)
    if normalization == "component":
        table = table * (4 * math.pi) ** 1.5
    return table.to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# change of basis: real SH <-> 2D Fourier basis on the torus of spherical angles
# ---------------------------------------------------------------------------------------------


@functools.cache
def _sh_to_fourier_table(lmax: int) -> np.ndarray:
    """A[i, u+L, v+L] with ``Y_i(theta, phi) = sum_uv A[i,u,v] exp(i(u theta + v phi))``, complex128.

    Each Y_lm is a polynomial of degree l in (sin theta sin phi, cos theta, sin theta cos phi), so
    it is a trigonometric polynomial of degree <= l in each angle; a (2L+2)^2 torus grid samples it
    without aliasing and an FFT returns the coefficients exactly (up to rounding). Y_lm only has
    ``v = +-m`` and ``u = -l..l`` with ``u = l (mod 2)``.
    """
    n = 2 * lmax + 2
    angles = 2 * math.pi * np.arange(n) / n
    values = _real_sh(lmax, angles[:, None], angles[None, :])  # (theta, phi, i)
    spectrum = np.fft.fft2(values, axes=(0, 1)) / n**2
    index = np.arange(-lmax, lmax + 1) % n
    table = np.ascontiguousarray(spectrum[index][:, index].transpose(2, 0, 1))
    table.real[np.abs(table.real) < _ZERO] = 0.0
    table.imag[np.abs(table.imag) < _ZERO] = 0.0
    table.setflags(write=False)
    return table


def _sin_weighted_integrals(kmax: int) -> np.ndarray:
    """``I[k + kmax] = int_0^pi exp(i k theta) sin(theta) dtheta`` for |k| <= kmax (closed form)."""

    def plain(n: int) -> complex:  # int_0^pi exp(i n theta) dtheta
        return math.pi if n == 0 else ((-1) ** n - 1) / (1j * n)

    return np.array([(plain(k + 1) - plain(k - 1)) / 2j for k in range(-kmax, kmax + 1)])


@functools.cache
def _fourier_to_sh_table(lmax_out: int, degree: int) -> np.ndarray:
    """B[i, u+D, v+D] with ``c_i = Re sum_uv F[u,v] B[i,u,v] = int f Y_i dOmega``, complex128.

    ``f = sum_{|u|,|v| <= D} F[u,v] exp(i(u theta + v phi))`` on theta in [0, pi]; the phi integral
    keeps ``v = -v'`` of Y_i's own spectrum, the theta integral is ``int_0^pi exp(ik theta) sin``.
    Shape ``((lmax_out+1)**2, 2D+1, 2D+1)``; non-zero only for ``|v| = |m_i|``.
    """
    a = _sh_to_fourier_table(lmax_out)  # (n, 2Lo+1 [u'], 2Lo+1 [v'])
    integrals = _sin_weighted_integrals(degree + lmax_out)
    d = degree
    out = np.zeros((a.shape[0], 2 * d + 1, 2 * d + 1), dtype=complex)
    for v in range(-min(d, lmax_out), min(d, lmax_out) + 1):
        col = a[:, :, lmax_out - v]  # A[i, u', -v]
        for u in range(-d, d + 1):
            ks = u + np.arange(-lmax_out, lmax_out + 1) + degree + lmax_out
            out[:, u + d, v + d] = 2 * math.pi * (col @ integrals[ks])
    out.real[np.abs(out.real) < _ZERO] = 0.0
    out.imag[np.abs(out.imag) < _ZERO] = 0.0
    out.setflags(write=False)
    return out


def sh_to_fourier(x: torch.Tensor) -> torch.Tensor:
    """2D Fourier coefficients of the sphere function with real SH coefficients ``x``.

    x: (..., (L+1)**2) real, e3nn order and integral normalization. Returns complex
    (..., 2L+1, 2L+1), entry ``[u+L, v+L]`` the coefficient of ``exp(i(u theta + v phi))`` with theta
    the polar angle from +y continued to [0, 2 pi) and phi the azimuth from +z towards +x. Uses
    the block sparsity of the change of basis (one block per ``|m|``): O(L^3) per function.
    """
    lmax = _degree_from_size("x", x.shape[-1])
    if not x.is_floating_point():
        raise ValueError(f"x must be a real floating-point tensor, got {x.dtype}")
    plan = _spectrum_plan(lmax, 2 * lmax + 1, x.dtype, x.device, full=True)
    return _to_spectrum(x, plan)


def fourier_to_sh(spectrum: torch.Tensor, lmax_out: int) -> torch.Tensor:
    """Projection onto real SH (degrees 0..lmax_out) of the function with 2D Fourier coefficients.

    spectrum: complex (..., 2D+1, 2D+1) in ``sh_to_fourier``'s layout, the spectrum of a real
    function on the torus that is a function on the sphere (as every ``sh_to_fourier`` output and
    their products are). Returns real (..., (lmax_out+1)**2) with ``c_i = int f Y_i dOmega``
    (integral normalization). O(L^3) per function (one dense block per ``|m|``).
    """
    lmax_out = _check_degree("lmax_out", lmax_out)
    if not _is_square_spectrum(spectrum):
        raise ValueError(f"spectrum must be complex (..., 2D+1, 2D+1), got {spectrum.dtype} {tuple(spectrum.shape)}")
    d = (spectrum.shape[-1] - 1) // 2
    real_dtype = spectrum.real.dtype
    plan = _projection_plan(lmax_out, d, 2 * d + 1, real_dtype, spectrum.device)
    # Hermitian symmetry: the v < 0 half is the conjugate of v > 0, folded into the plan's factor 2.
    half = spectrum[..., :, d:]
    half = torch.cat([half[..., d:, :], half[..., :d, :]], dim=-2)  # u in FFT order 0..D, -D..-1
    return _from_spectrum(half, plan)


def fourier_product(spectrum1: torch.Tensor, spectrum2: torch.Tensor) -> torch.Tensor:
    """Spectrum of the pointwise product: 2D linear convolution by zero-padded FFTs.

    spectrum1: complex (..., 2L1+1, 2L1+1), spectrum2: complex (..., 2L2+1, 2L2+1) (leading dims
    broadcast), layout of ``sh_to_fourier``. Returns complex (..., 2(L1+L2)+1, 2(L1+L2)+1). The
    padded size is at least 2(L1+L2)+1 per axis, so the circular convolution does not wrap.
    """
    for name, s in (("spectrum1", spectrum1), ("spectrum2", spectrum2)):
        if not _is_square_spectrum(s):
            raise ValueError(f"{name} must be complex (..., 2L+1, 2L+1), got {s.dtype} {tuple(s.shape)}")
    l1, l2 = (spectrum1.shape[-1] - 1) // 2, (spectrum2.shape[-1] - 1) // 2
    d = l1 + l2
    n = _nice_fft_size(2 * d + 1)

    def padded(s: torch.Tensor, l: int) -> torch.Tensor:
        out = s.new_zeros(s.shape[:-2] + (n, n))
        idx = torch.arange(-l, l + 1, device=s.device) % n
        return out.index_copy(-2, idx, s.new_zeros(s.shape[:-2] + (2 * l + 1, n)).index_copy(-1, idx, s))

    grid1 = torch.fft.ifft2(padded(spectrum1, l1), norm="forward")
    grid = grid1 * torch.fft.ifft2(padded(spectrum2, l2), norm="forward")
    product = torch.fft.fft2(grid, norm="forward")
    idx = torch.arange(-d, d + 1, device=product.device) % n
    return product.index_select(-2, idx).index_select(-1, idx)


# ---------------------------------------------------------------------------------------------
# precomputed plans (cached per degrees, dtype and device)
# ---------------------------------------------------------------------------------------------


@functools.cache
def _spectrum_plan(lmax: int, n_u: int, dtype: torch.dtype, device: torch.device, full: bool = False) -> Dict:
    """Per-|m| blocks of the SH -> Fourier map.

    With ``full=False`` block v maps the coefficients (l, +v), (l, -v) to the half spectrum column
    v (u in FFT order of length n_u, zero padded), as real (re, im) pairs; with ``full=True`` to the
    columns +v and -v of the full spectrum with u = -L..L (``sh_to_fourier``).
    """
    a = _sh_to_fourier_table(lmax)
    ms = _orders(lmax)
    blocks, order = [], []
    for v in range(lmax + 1):
        rows = np.flatnonzero(np.abs(ms) == v)
        order.append(rows)
        if full:
            cols = [lmax + v] if v == 0 else [lmax - v, lmax + v]
            block = a[rows][:, :, cols]  # (k, 2L+1, ncols)
        else:
            block = np.zeros((len(rows), n_u), dtype=complex)
            block[:, np.arange(-lmax, lmax + 1) % n_u] = a[rows, :, lmax + v]
        block = np.stack([block.real, block.imag], axis=-1).reshape(len(rows), -1)
        blocks.append(torch.tensor(block, dtype=dtype, device=device))
    return {
        "lmax": lmax,
        "n_u": n_u,
        "full": full,
        "order": torch.tensor(np.concatenate(order), device=device),
        "sizes": [b.shape[0] for b in blocks],
        "blocks": blocks,
    }


def _to_spectrum(x: torch.Tensor, plan: Dict) -> torch.Tensor:
    """Apply a ``_spectrum_plan``: (..., n) real -> complex spectrum (see the plan's layouts)."""
    lmax, lead = plan["lmax"], x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1]).index_select(1, plan["order"])
    parts = [p @ w for p, w in zip(torch.split(flat, plan["sizes"], dim=1), plan["blocks"])]
    if plan["full"]:
        width = 2 * lmax + 1
        cols = [torch.view_as_complex(p.view(-1, width, p.shape[1] // (2 * width), 2)) for p in parts]
        # columns ordered v = 0, (-1, +1), (-2, +2), ... -> v = -L..L
        neg = [c[..., 0:1] for c in cols[:0:-1]]
        pos = [cols[0]] + [c[..., 1:2] for c in cols[1:]]
        spectrum = torch.cat(neg + pos, dim=-1)
        return spectrum.reshape(lead + (width, width))
    n_u = plan["n_u"]
    half = torch.stack([p.view(-1, n_u, 2) for p in parts], dim=-2)  # (rows, n_u, V, 2)
    return torch.view_as_complex(half).reshape(lead + (n_u, lmax + 1))


@functools.cache
def _projection_plan(lmax_out: int, degree: int, n_u: int, dtype: torch.dtype, device: torch.device) -> Dict:
    """Per-|m| blocks of the half spectrum -> SH projection.

    Input: half spectrum column v (v = 0..lmax_out), u in FFT order of length n_u >= 2*degree+1, as
    (re, im) pairs; output: coefficients (l, +v), (l, -v). Uses ``c = 2 Re sum_u F[u,v] B[u,v]``
    for v > 0 (the v < 0 half is the complex conjugate).
    """
    b = _fourier_to_sh_table(lmax_out, degree)
    ms = _orders(lmax_out)
    blocks, order = [], []
    for v in range(min(lmax_out, degree) + 1):
        rows = np.flatnonzero(np.abs(ms) == v)
        order.append(rows)
        block = np.zeros((n_u, len(rows)), dtype=complex)
        block[np.arange(-degree, degree + 1) % n_u] = b[rows][:, :, degree + v].T * (1.0 if v == 0 else 2.0)
        block = np.stack([block.real, -block.imag], axis=1).reshape(2 * n_u, len(rows))
        blocks.append(torch.tensor(block, dtype=dtype, device=device))
    computed = sum(len(rows) for rows in order)
    order.append(np.flatnonzero(np.abs(ms) > degree))  # |m| > degree: exact zeros, appended last
    order = np.concatenate(order)
    inverse = np.empty((lmax_out + 1) ** 2, dtype=np.int64)
    inverse[order] = np.arange(len(order))
    return {
        "n_out": (lmax_out + 1) ** 2,
        "computed": computed,
        "inverse": torch.tensor(inverse, device=device),
        "blocks": blocks,
    }


def _from_spectrum(half: torch.Tensor, plan: Dict) -> torch.Tensor:
    """Apply a ``_projection_plan``: complex (..., n_u, >=V) half spectrum -> (..., n_out) real."""
    lead, n_u = half.shape[:-2], half.shape[-2]
    pairs = torch.view_as_real(half.reshape((-1,) + half.shape[-2:]))  # (rows, n_u, V', 2)
    parts = [pairs[:, :, v].reshape(-1, 2 * n_u) @ w for v, w in enumerate(plan["blocks"])]
    out = torch.cat(parts, dim=1)
    if plan["computed"] < plan["n_out"]:  # degrees above L1+L2 (or v above the degree) are zero
        out = torch.cat([out, out.new_zeros(out.shape[0], plan["n_out"] - plan["computed"])], dim=1)
    return out.index_select(1, plan["inverse"]).reshape(lead + (plan["n_out"],))


@functools.cache
def _fourier_sizes(lmax1: int, lmax2: int, lmax_out: int) -> Tuple[int, int]:
    """Torus grid (n_u, n_v) for the FFT product: no wrap-around where coefficients are read."""
    d = lmax1 + lmax2
    n_u = _nice_fft_size(2 * d + 1)
    # v: every input column fits below Nyquist, and the read columns v <= lmax_out are alias free
    n_v = _nice_fft_size(max(d + lmax_out + 1, 2 * max(lmax1, lmax2) + 1))
    while (n_v - 1) // 2 < max(lmax1, lmax2):
        n_v = _nice_fft_size(n_v + 1)
    return n_u, n_v


@functools.cache
def _grid_plan(lmax1: int, lmax2: int, lmax_out: int, dtype: torch.dtype, device: torch.device) -> Dict:
    """SH values at the exact quadrature nodes (inputs) and weighted SH (output projection)."""
    theta, phi, w = _sphere_quadrature(lmax1 + lmax2 + lmax_out)
    y1 = torch.tensor(_real_sh(lmax1, theta, phi).T.copy(), dtype=dtype, device=device)
    y2 = y1 if lmax2 == lmax1 else torch.tensor(_real_sh(lmax2, theta, phi).T.copy(), dtype=dtype, device=device)
    y_out = torch.tensor(w[:, None] * _real_sh(lmax_out, theta, phi), dtype=dtype, device=device)
    return {"in1": y1, "in2": y2, "out": y_out}


@functools.cache
def _gaunt_plan(lmax1: int, lmax2: int, lmax_out: int, dtype: torch.dtype, device: torch.device) -> Dict:
    """The Gaunt tensor reshaped for the two contraction orders of the "dense" route."""
    g = _gaunt_table(lmax1, lmax2, lmax_out)
    n1, n2, n3 = g.shape
    return {
        # x2 first: (n2, n1 * n3), for the per-row matrix M = x2 . G
        "by_x2": torch.tensor(g.transpose(1, 0, 2).reshape(n2, n1 * n3), dtype=dtype, device=device),
        # outer product first: (n1 * n2, n3)
        "by_pair": torch.tensor(g.reshape(n1 * n2, n3), dtype=dtype, device=device),
    }


# ---------------------------------------------------------------------------------------------
# the product
# ---------------------------------------------------------------------------------------------


def select_method(
    lmax1: int, lmax2: int, lmax_out: int, x2_shared_by: int = 1, channel_weighted_x2: bool = False
) -> str:
    """The fastest exact method on a CPU (float32, 1 thread), from a cost model fitted to timings.

    ``x2_shared_by``: how many rows of x1 use each row of x2 (the channel count when x2 is the
    same for every channel, else 1); ``channel_weighted_x2``: that shared x2 gets per-channel
    degree weights (``GauntTensorProduct(weights="channel")``), which grid and dense fold in per
    degree of x2 instead of expanding x2 over the channels. Costs are in units of one multiply-add of the grid GEMMs
    (about 21-27 ps each on the 2-core AMD EPYC dev box): grid ``(n1 + n_out + n2/share) Q``; dense
    ``n1 n2 n_out / share + n1 n_out`` when x2 is shared, else twice ``n1 n2 n_out`` (it
    materialises the outer product); fourier ``35 N log2 N (2 + 1/share)/3`` for the ``N = N_u N_v``
    point torus (pocketfft on such small transforms costs ~35 units per point and log step).
    Measured per function (unshared x2, L1 = L2 = L_out = L): grid 0.06/0.76/7.7/22/105 us at
    L = 2/6/12/16/24, fourier 0.6/6.6/16/30/83 us, dense 0.13/3.2 us at L = 2/6: dense wins for
    small degrees with a shared x2, grid up to L ~ 20, the FFT route above (timed when degrees
    above 16 were allowed; Gaunt products now take degrees 0..16, the range of the shared
    spherical harmonics).
    """
    lo = min(lmax_out, lmax1 + lmax2)
    n1, n2, n3 = ((l + 1) ** 2 for l in (lmax1, lmax2, lo))
    share = max(int(x2_shared_by), 1)
    q = _quadrature_size(lmax1 + lmax2 + lo)
    costs = {"grid": (n1 + n3 + n2 / share) * q}
    costs["dense"] = n1 * n2 * n3 / share + n1 * n3 if share > 1 else 2 * n1 * n2 * n3
    if channel_weighted_x2 and share > 1:
        costs["grid"] += (lmax2 + 1) * q
        # the (rows, C, L2+1, n_out) per-degree products and their weighted sum: measured slower
        # than the grid fold at L = 2-6 (forward+backward), hence the factor 4 on top of the GEMM
        costs["dense"] += 4 * (lmax2 + 1) * n1 * n3
    n_u, n_v = _fourier_sizes(lmax1, lmax2, lo)
    fft_share = 1 if channel_weighted_x2 else share  # the FFT route expands a weighted x2
    costs["fourier"] = 35 * n_u * n_v * math.log2(n_u * n_v) * (2 + 1 / fft_share) / 3
    return min(costs, key=costs.get)


def _quadrature_size(degree: int) -> int:
    return (degree // 2 + 1) * (degree + 1)


def _validated_pair(x1: torch.Tensor, x2: torch.Tensor) -> Tuple[int, int]:
    for name, x in (("x1", x1), ("x2", x2)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 1 or not x.is_floating_point():
            raise ValueError(
                f"{name} must be a real floating-point tensor (..., (L+1)**2), got {x.dtype} {tuple(x.shape)}"
            )
    if x1.dtype != x2.dtype or x1.device != x2.device:
        raise ValueError(
            f"x1 and x2 must share dtype and device, got {x1.dtype}/{x1.device} and {x2.dtype}/{x2.device}"
        )
    try:
        torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"leading dims of x1 {tuple(x1.shape[:-1])} and x2 {tuple(x2.shape[:-1])} do not broadcast"
        ) from None
    return _degree_from_size("x1", x1.shape[-1]), _degree_from_size("x2", x2.shape[-1])


def gaunt_product(
    x1: torch.Tensor,
    x2: torch.Tensor,
    lmax_out: int,
    *,
    normalization: Normalization = "integral",
    method: Method = "auto",
) -> torch.Tensor:
    """SH coefficients (degrees 0..lmax_out) of the product of two sphere functions.

    x1: (..., (L1+1)**2), x2: (..., (L2+1)**2) real coefficients in e3nn order (leading dims
    broadcast; a size-1 dim in x2 is computed once and broadcast, e.g. x2 (E, 1, n2) against
    x1 (E, C, n1)). Returns (broadcast..., (lmax_out+1)**2): ``out_k = sum_ij G[i,j,k] x1_i x2_j``
    with the integral-normalized Gaunt coefficients, times sqrt(4 pi) for "component" (see the
    module docstring). Degrees above L1+L2 are zero. Differentiable in x1 and x2.
    """
    lmax_out = _check_degree("lmax_out", lmax_out)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    _check_choice("method", method, METHODS)
    lmax1, lmax2 = _validated_pair(x1, x2)
    return _gaunt_product(x1, x2, lmax1, lmax2, lmax_out, normalization, method)


def _gaunt_product(
    x1: torch.Tensor,
    x2: torch.Tensor,
    lmax1: int,
    lmax2: int,
    lmax_out: int,
    normalization: str,
    method: str,
    weight2: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``gaunt_product`` on validated inputs.

    ``weight2`` (C, lmax2+1), only with x1 (..., C, n1) and a shared x2 (..., 1, n2): channel c
    uses ``weight2[c, l] * x2`` in degree l. The grid and dense routes fold it in after applying
    each degree of x2 once per row (cheaper than expanding x2 over the channels); fourier expands.
    """
    lo = min(lmax_out, lmax1 + lmax2)
    shared = x1.ndim >= 2 and x2.ndim >= 2 and x2.shape[-2] == 1 and x1.shape[-2] > 1
    if method == "auto":
        method = select_method(lmax1, lmax2, lo, x1.shape[-2] if shared else 1, weight2 is not None)
    fold = method == "grid" or (method == "dense" and shared and x2.shape[:-2] == x1.shape[:-2])
    if weight2 is not None and not fold:
        x2 = x2 * weight2[:, torch.as_tensor(_degrees(lmax2), device=x2.device)]
        shared, weight2 = False, None
    if x1.ndim >= 2 and x1.ndim == x2.ndim and x1.shape[0] == x2.shape[0]:
        # Blocked evaluation along dim 0: each block's intermediates stay small (cache resident, and
        # below glibc's mmap threshold, so no page faults on every fresh buffer): 3-4x faster on CPU
        # at 10^5 rows than one pass. split/cat keep autograd (and double backward) linear in size.
        inner = math.prod(torch.broadcast_shapes(x1.shape[1:-1], x2.shape[1:-1]))
        split = lmax2 + 1 if weight2 is not None else 1  # folded weights keep one copy per degree of x2
        rows = max(1, _BLOCK_ELEMENTS // _row_elements(method, lmax1, lmax2, lo, shared, inner, split))
        if x1.shape[0] > rows:
            blocks = zip(x1.split(rows), x2.split(rows))
            out = torch.cat([_product_block(a, b, lmax1, lmax2, lo, method, shared, weight2) for a, b in blocks])
        else:
            out = _product_block(x1, x2, lmax1, lmax2, lo, method, shared, weight2)
    else:
        out = _product_block(x1, x2, lmax1, lmax2, lo, method, shared, weight2)
    if lo < lmax_out:
        out = torch.cat([out, out.new_zeros(out.shape[:-1] + ((lmax_out + 1) ** 2 - (lo + 1) ** 2,))], dim=-1)
    if normalization == "component":
        out = out * math.sqrt(4 * math.pi)
    return out


# elements of the intermediates per block, 2 MB in float32 (fastest of 2^17..2^21 at L = 2-6)
_BLOCK_ELEMENTS = 1 << 19


def _row_elements(
    method: str, lmax1: int, lmax2: int, lmax_out: int, shared: bool, inner: int, split: int = 1
) -> int:
    """Elements of the intermediates per index of dim 0 (``inner`` entries between dims 0 and -1).

    ``split``: copies kept per degree of x2 when per-channel weights are folded in (else 1).
    """
    n1, n2, n3 = ((l + 1) ** 2 for l in (lmax1, lmax2, lmax_out))
    if method == "grid":
        return (inner + split) * _quadrature_size(lmax1 + lmax2 + lmax_out)
    if method == "dense":
        return split * (n1 * n3 + inner * n3) if shared else inner * n1 * n2
    n_u, n_v = _fourier_sizes(lmax1, lmax2, lmax_out)
    return inner * n_u * n_v


def _product_block(
    x1: torch.Tensor,
    x2: torch.Tensor,
    lmax1: int,
    lmax2: int,
    lo: int,
    method: str,
    shared: bool,
    weight2: Optional[torch.Tensor],
) -> torch.Tensor:
    """The product up to degree ``lo <= lmax1 + lmax2`` by one resolved method, integral normalization."""
    lead = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
    dtype, device = x1.dtype, x1.device
    if method == "grid":
        plan = _grid_plan(lmax1, lmax2, lo, dtype, device)
        g1 = x1 @ plan["in1"]  # (..., Q) values at the quadrature nodes
        if weight2 is None:
            g2 = x2 @ plan["in2"]
        else:  # each degree of x2 on the grid once, then the channels' weighted sums
            y2 = plan["in2"]
            per_degree = torch.stack(
                [x2[..., 0, l * l : (l + 1) ** 2] @ y2[l * l : (l + 1) ** 2] for l in range(lmax2 + 1)]
            )
            g2 = weight2 @ per_degree.reshape(lmax2 + 1, -1)  # (C, rows * Q): Q stays the inner dim
            # (..., C, Q) contiguous: the product and its backward run ~3x faster than on the view
            g2 = g2.view((weight2.shape[0],) + per_degree.shape[1:]).movedim(0, -2).contiguous()
        out = (g1 * g2) @ plan["out"]
    elif method == "dense":
        plan = _gaunt_plan(lmax1, lmax2, lo, dtype, device)
        n1, n3 = x1.shape[-1], (lo + 1) ** 2
        if shared and x2.shape[:-2] == x1.shape[:-2]:
            x2_rows = x2.reshape(-1, x2.shape[-1])
            if weight2 is None:  # M[r] = x2[r] . G: one (n1, n3) matrix per row, shared by its channels
                m = (x2_rows @ plan["by_x2"]).view(-1, n1, n3)
                out = torch.bmm(x1.reshape(m.shape[0], -1, n1), m).view(lead + (n3,))
            else:  # one M per row and degree of x2, then each channel's weighted sum over the degrees
                by_x2 = plan["by_x2"]
                m = torch.stack(
                    [
                        (x2_rows[:, l * l : (l + 1) ** 2] @ by_x2[l * l : (l + 1) ** 2]).view(-1, n1, n3)
                        for l in range(lmax2 + 1)
                    ],
                    dim=2,
                )  # (rows, n1, L2+1, n3)
                per_degree = torch.bmm(x1.reshape(m.shape[0], -1, n1), m.view(m.shape[0], n1, -1))
                per_degree = per_degree.view(m.shape[0], -1, lmax2 + 1, n3)  # (rows, C, L2+1, n3)
                out = (per_degree * weight2[..., None]).sum(dim=2).view(lead + (n3,))
        else:
            a, b = torch.broadcast_tensors(x1[..., :, None], x2[..., None, :])
            out = a.mul(b).reshape(lead + (-1,)) @ plan["by_pair"]
    else:  # fourier
        n_u, n_v = _fourier_sizes(lmax1, lmax2, lo)
        grids = []
        for x, l in ((x1, lmax1), (x2, lmax2)):
            half = _to_spectrum(x, _spectrum_plan(l, n_u, dtype, device))
            # 2D inverse FFT as u (complex, zero padded in the plan) then v (c2r, padded by n)
            grids.append(torch.fft.irfft(torch.fft.ifft(half, dim=-2, norm="forward"), n=n_v, dim=-1, norm="forward"))
        # 2D forward FFT as v (r2c, keeping only the columns v <= lo that are read) then u
        product = torch.fft.rfft(grids[0] * grids[1], dim=-1, norm="forward")[..., : lo + 1]
        product = torch.fft.fft(product, dim=-2, norm="forward")
        out = _from_spectrum(product, _projection_plan(lo, lmax1 + lmax2, n_u, dtype, device))
    return out


# ---------------------------------------------------------------------------------------------
# e3nn "mul x ir" layout adapters
# ---------------------------------------------------------------------------------------------


@functools.cache
def _mul_ir_index(lmax: int, channels: int) -> np.ndarray:
    """Flat e3nn index of entry (i, c) of the (n, C) layout, shape (n * C,)."""
    ls, ms = _degrees(lmax), _orders(lmax)
    c = np.arange(channels)
    flat = channels * ls[:, None] ** 2 + c[None, :] * (2 * ls[:, None] + 1) + (ms + ls)[:, None]
    return flat.reshape(-1)


def mul_ir_to_channels(x: torch.Tensor, lmax: int, channels: int) -> torch.Tensor:
    """e3nn flat features of irreps ``C x 0 + C x 1 + ... + C x L`` -> (..., (L+1)**2, C).

    x: (..., C*(L+1)**2), e3nn's layout: degree blocks in order, inside each the C copies one after
    the other (``[l][c][m]``), whatever the parities. Returns a new tensor in the (SH index,
    channel) layout that ``GauntTensorProduct`` takes. Inverse: ``channels_to_mul_ir``.
    """
    lmax, channels = _check_degree("lmax", lmax), _check_degree("channels", channels)
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    n = (lmax + 1) ** 2
    if x.ndim < 1 or x.shape[-1] != channels * n:
        raise ValueError(f"x must have last dim channels*(lmax+1)**2 = {channels * n}, got shape {tuple(x.shape)}")
    index = torch.as_tensor(_mul_ir_index(lmax, channels), device=x.device)
    return x.index_select(-1, index).reshape(x.shape[:-1] + (n, channels))


def channels_to_mul_ir(x: torch.Tensor) -> torch.Tensor:
    """(..., (L+1)**2, C) -> e3nn flat (..., C*(L+1)**2) of irreps ``C x 0 + ... + C x L``."""
    if x.ndim < 2:
        raise ValueError(f"x must be (..., (L+1)**2, C), got shape {tuple(x.shape)}")
    lmax, channels = _degree_from_size("x", x.shape[-2]), x.shape[-1]
    index = _mul_ir_index(lmax, channels)
    inverse = torch.empty(len(index), dtype=torch.long, device=x.device)
    inverse[torch.as_tensor(index, device=x.device)] = torch.arange(len(index), device=x.device)
    return x.reshape(x.shape[:-2] + (-1,)).index_select(-1, inverse)


# ---------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------


class GauntTensorProduct(nn.Module):
    r"""Channelwise Gaunt tensor product with learnable per-degree weights (Luo et al., ICLR 2024).

    For each channel c, with degree weights ``w1[c, l]`` and ``w2[c, l]``,

        out[..., k, c] = sum_ij G[i, j, k] (w1[c, l_i] x1[..., i, c]) (w2[c, l_j] x2[..., j, c])

    i.e. the SH coefficients (degrees 0..lmax_out) of the product of the two weighted sphere
    functions; ``G`` are the Gaunt coefficients (``gaunt_coefficients``), so the path
    (l1, l2) -> l3 carries the weight ``w1[c, l1] w2[c, l2]`` (the paper's reparametrisation that
    makes the Gaunt product act like a weighted tensor product).

    Args:
        lmax1, lmax2: degrees of the inputs. lmax_out: degree of the output (above lmax1+lmax2 the
            coefficients are zero).
        channels: C, the number of channels (each channel is its own product).
        weights: ``"channel"``: learnable ``w1`` (C, lmax1+1) and ``w2`` (C, lmax2+1), initialised to
            one; ``"degree"``: learnable ``w1`` (lmax1+1,), ``w2`` (lmax2+1,) shared by the channels
            (keeps a shared ``x2`` shared: faster); ``"none"``: the plain Gaunt product.
        normalization: ``"integral"`` (orthonormal SH, e3nn's default) or ``"component"``
            (``Y_00 = 1``); inputs and output use the same one (module docstring).
        method: ``"auto"``, ``"fourier"`` (the paper's FFT route), ``"grid"`` or ``"dense"``; all
            give the same result (module docstring, ``select_method``).

    Shapes (coefficients in e3nn order ``l*l + l + m`` inside each channel, "l-major"; use
    ``mul_ir_to_channels`` / ``channels_to_mul_ir`` for e3nn's flat ``C x 0e + C x 1o + ...``):
        x1: (..., (lmax1+1)**2, C);
        x2: (..., (lmax2+1)**2, C) with as many dims as x1, or (..., (lmax2+1)**2) with one dim fewer,
        shared by every channel (edge spherical harmonics; computed once per row, not per channel);
        returns (..., (lmax_out+1)**2, C). Leading dims broadcast.

    What it cannot express, compared with e3nn's Clebsch-Gordan tensor products:
        * the product of functions on the sphere is symmetric in its inputs and only couples
          (l1, l2, l3) with l1 + l2 + l3 even (the parity-preserving "Gaunt" paths); paths with
          l1 + l2 + l3 odd are missing, e.g. the cross product 1o x 1o -> 1e, and every
          antisymmetric coupling of two copies of the same input;
        * coefficients are treated as SH of parity (-1)^l (0e, 1o, 2e, ...); pseudo-tensor inputs
          (1e, 0o, ...) have no meaning here;
        * one weight per path family (``w1[l1] w2[l2]``, a rank-one factorisation) instead of an
          independent weight per path and channel pair as in e3nn's ``uvu``/``uvw`` modes; no channel
          mixing (follow it with a linear layer for that).
    """

    def __init__(
        self,
        lmax1: int,
        lmax2: int,
        lmax_out: int,
        channels: int,
        *,
        weights: WeightMode = "channel",
        normalization: Normalization = "integral",
        method: Method = "auto",
    ) -> None:
        super().__init__()
        self.lmax1 = _check_degree("lmax1", lmax1)
        self.lmax2 = _check_degree("lmax2", lmax2)
        self.lmax_out = _check_degree("lmax_out", lmax_out)
        self.channels = _check_degree("channels", channels)
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.weight_mode = _check_choice("weights", weights, WEIGHT_MODES)
        self.normalization = _check_choice("normalization", normalization, NORMALIZATIONS)
        self.method = _check_choice("method", method, METHODS)
        if weights == "none":
            self.register_parameter("weight1", None)
            self.register_parameter("weight2", None)
        else:
            lead = (self.channels,) if weights == "channel" else ()
            self.weight1 = nn.Parameter(torch.ones(lead + (self.lmax1 + 1,)))
            self.weight2 = nn.Parameter(torch.ones(lead + (self.lmax2 + 1,)))
        self.register_buffer("_degree1", torch.as_tensor(_degrees(self.lmax1)), persistent=False)
        self.register_buffer("_degree2", torch.as_tensor(_degrees(self.lmax2)), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"lmax1={self.lmax1}, lmax2={self.lmax2}, lmax_out={self.lmax_out}, channels={self.channels}, "
            f"weights={self.weight_mode!r}, normalization={self.normalization!r}, method={self.method!r}"
        )

    def resolved_method(self, shared_x2: bool = True) -> str:
        """The route ``forward`` takes: ``method``, or what ``"auto"`` picks for this layer.

        ``shared_x2``: whether x2 comes without a channel dim (one x2 row for all channels).
        """
        if self.method != "auto":
            return self.method
        share = self.channels if shared_x2 else 1
        channel_weighted = shared_x2 and self.weight_mode == "channel"
        lmax_out = min(self.lmax_out, self.lmax1 + self.lmax2)
        return select_method(self.lmax1, self.lmax2, lmax_out, share, channel_weighted)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1 (..., (lmax1+1)**2, C), x2 (..., (lmax2+1)**2[, C]) -> (..., (lmax_out+1)**2, C).

        The result is a transposed view of a (..., C, (lmax_out+1)**2) tensor (call ``.contiguous()``
        if a later op needs it dense in this layout).
        """
        n1, n2, c = (self.lmax1 + 1) ** 2, (self.lmax2 + 1) ** 2, self.channels
        if not isinstance(x1, torch.Tensor) or x1.ndim < 2 or tuple(x1.shape[-2:]) != (n1, c):
            shape = tuple(x1.shape) if isinstance(x1, torch.Tensor) else type(x1).__name__
            raise ValueError(f"x1 must have shape (..., {n1}, {c}) = (..., (lmax1+1)**2, channels), got {shape}")
        if not isinstance(x2, torch.Tensor) or x2.ndim < 1:
            raise ValueError(f"x2 must be a tensor (..., {n2}[, {c}]), got {type(x2).__name__}")
        # per channel: as many dims as x1; shared by the channels: one dim fewer (unambiguous)
        per_channel = x2.ndim == x1.ndim
        expected = (n2, c) if per_channel else (n2,)
        if x2.ndim not in (x1.ndim, x1.ndim - 1) or tuple(x2.shape[x2.ndim - len(expected) :]) != expected:
            raise ValueError(
                f"x2 must have shape (..., {n2}, {c}) (per channel, as many dims as x1) or (..., {n2}) (shared by "
                f"the channels, one dim fewer) with (lmax2+1)**2 = {n2}; got {tuple(x2.shape)} for x1 {tuple(x1.shape)}"
            )
        if x1.dtype != x2.dtype or x1.device != x2.device or not x1.is_floating_point():
            raise ValueError(f"x1 and x2 must be floating point of one dtype and device, got {x1.dtype}, {x2.dtype}")
        # one transposing copy to (..., C, n): rows of SH coefficients for the GEMMs of the product
        a = x1.transpose(-1, -2).contiguous()
        b = x2.transpose(-1, -2).contiguous() if per_channel else x2.unsqueeze(-2)  # (..., C or 1, n2)
        weight2 = None
        if self.weight1 is not None:
            a = a * self.weight1[..., self._degree1]
            if self.weight_mode == "channel" and not per_channel:
                weight2 = self.weight2  # folded in by the product (keeps x2 shared where it can)
            else:
                b = b * self.weight2[..., self._degree2]
        try:
            torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except RuntimeError:
            raise ValueError(
                f"leading dims of x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)} do not broadcast"
            ) from None
        out = _gaunt_product(
            a, b.contiguous(), self.lmax1, self.lmax2, self.lmax_out, self.normalization, self.method, weight2
        )
        return out.transpose(-1, -2)

"""Wigner-D matrices of 3x3 (im)proper rotations in e3nn's basis, and per-edge frames.

``wigner_D(lmax, R)`` is the block-diagonal matrix of the spherical-harmonic irreps
0e + 1o + 2e + ... + lmax (parity (-1)^l), i.e. ``e3nn.o3.Irreps.spherical_harmonics(lmax)
.D_from_matrix(R)``, so that ``spherical_harmonics(lmax, v @ R.T) = spherical_harmonics(lmax, v) @
wigner_D(lmax, R).T`` for every R in O(3).

How: Y^l is a degree-l polynomial and D^l(R) Y^l(p) = Y^l(R p). Evaluating the harmonics on a
fixed point set P rotated by R gives D^l(R) = Y^l(R P) Y^l(P)^+, where the right pseudo-inverse
Y^l(P)^+ is computed once in float64. P is a Fibonacci sphere with the fewest points (at least
2 lmax + 1) for which every Y^l(P) has condition number below 10, so float32 keeps ~1e-6
accuracy. No Euler angles, hence no gimbal singularities; improper R give the parity for free
because the harmonics have parity (-1)^l; the result is a polynomial in R's entries, so it is
differentiable everywhere.
"""

from __future__ import annotations

import functools
from typing import List, Tuple

import numpy as np
import torch

from sciml.ops.spherical_harmonics import MAX_L, cg_spherical_harmonics, harmonics_of_rows

_MAX_CONDITION = 10.0


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = np.pi * (1.0 + 5**0.5) * i
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


@functools.lru_cache(maxsize=None)
def _point_set(lmax: int) -> Tuple[np.ndarray, Tuple[np.ndarray, ...]]:
    """(P (n, 3), right pseudo-inverses of Y^l(P) (n, 2l+1) for l = 0..lmax), float64."""
    for n in range(2 * lmax + 1, 6 * lmax + 8):
        points = _fibonacci_sphere(n)
        harmonics = cg_spherical_harmonics(lmax, points)  # Y^l(P) as (n, 2l+1)
        if max(np.linalg.cond(y) for y in harmonics) < _MAX_CONDITION:
            return points, tuple(np.linalg.pinv(y.T) for y in harmonics)
    raise RuntimeError(f"no well-conditioned point set found for lmax {lmax}")  # not reached for lmax <= 16


@functools.lru_cache(maxsize=64)
def _torch_point_set(lmax: int, dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    points, pinvs = _point_set(lmax)
    return (
        torch.tensor(points.T, dtype=dtype, device=device),
        [torch.tensor(p, dtype=dtype, device=device) for p in pinvs],
    )


def _check(lmax: int, rotations: torch.Tensor) -> None:
    if isinstance(lmax, bool) or not isinstance(lmax, (int, np.integer)) or not 0 <= lmax <= MAX_L:
        raise ValueError(f"lmax must be an int in 0..{MAX_L}, got {lmax!r}")
    if rotations.ndim < 2 or rotations.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must have shape (..., 3, 3), got {tuple(rotations.shape)}")
    if not rotations.is_floating_point():
        raise ValueError(f"rotations must be a floating-point tensor, got {rotations.dtype}")


def wigner_D_blocks(lmax: int, rotations: torch.Tensor) -> List[torch.Tensor]:
    """Per-degree Wigner-D matrices of (im)proper rotations, in e3nn's basis.

    Args:
        lmax: highest degree, 0..16.
        rotations: (..., 3, 3) orthogonal matrices (det +1 or -1), acting on column vectors.

    Returns:
        [D^0, ..., D^lmax], D^l of shape (..., 2l+1, 2l+1) (contiguous), equal to e3nn's
        ``Irrep(l, (-1)**l).D_from_matrix(R)``. Differentiable with respect to ``rotations``.
        Several times cheaper than :func:`wigner_D`, which also writes the zero off-diagonal
        blocks (93% of its entries at lmax 6).
    """
    _check(lmax, rotations)
    batch = rotations.shape[:-2]
    return [b.permute(2, 0, 1).contiguous().view(*batch, *b.shape[:2]) for b in _edge_minor_blocks(lmax, rotations)]


def _edge_minor_blocks(lmax: int, rotations: torch.Tensor) -> List[torch.Tensor]:
    """[D^l as an edge-minor (2l+1, 2l+1, E) tensor (D^l[e, a, b] at [a, b, e])] for l = 0..lmax."""
    points, pinvs = _torch_point_set(lmax, rotations.dtype, rotations.device)
    e, n = rotations.numel() // 9, points.shape[1]
    # Rows (3, n E) of the rotated points R_e p, point-major and edge-minor, so that every
    # product below is one plain matrix product with the long edge axis last.
    rows = torch.einsum("ekj,jp->kpe", rotations.reshape(e, 3, 3), points).reshape(3, n * e)
    harmonics = harmonics_of_rows(rows, tuple(range(lmax + 1)), "component", as_rows=True)  # (K, n E)
    # D^l[e, a, b] = sum_p Y^l_a(R_e p) pinv[p, b]; as (a, b, e) = pinv^T @ Y^l_a(R P) per a.
    # (torch.split: its backward is one cat, where slicing would zero-fill a full gradient per degree.)
    degrees = torch.split(harmonics, [2 * l + 1 for l in range(lmax + 1)])
    return [pinv.t() @ y.view(2 * l + 1, n, e) for l, (pinv, y) in enumerate(zip(pinvs, degrees))]


def wigner_D(lmax: int, rotations: torch.Tensor) -> torch.Tensor:
    """Block-diagonal Wigner-D of the irreps 0e + 1o + ... + lmax for (im)proper rotations.

    Args:
        lmax: highest degree, 0..16.
        rotations: (..., 3, 3) orthogonal matrices acting on column vectors.

    Returns:
        (..., (lmax+1)^2, (lmax+1)^2), equal to ``e3nn.o3.Irreps.spherical_harmonics(lmax)
        .D_from_matrix(R)``: D(R1 R2) = D(R1) D(R2), D(R)^T = D(R^T). Differentiable. For
        orthogonal input only: other matrices give the polynomial extension, not D of the
        nearest rotation.
    """
    _check(lmax, rotations)
    dim = (lmax + 1) ** 2
    e = rotations.numel() // 9
    # Each block row is [0, D^l, 0] with broadcast (stride-0) zeros, so every entry is written
    # once and the backward is plain slicing (slice assignments would clone the gradient per
    # block). At lmax 6 the matrix is 93% zeros and writing it is most of the cost.
    zero = rotations.new_zeros(())
    rows = []
    for l, block in enumerate(_edge_minor_blocks(lmax, rotations)):
        start, stop = l * l, (l + 1) ** 2
        rows.append(
            torch.cat(
                [zero.expand(e, stop - start, start), block.permute(2, 0, 1), zero.expand(e, stop - start, dim - stop)],
                2,
            )
        )
    out = torch.cat(rows, 1)
    return out.view(*rotations.shape[:-2], dim, dim)


def edge_rotation(vectors: torch.Tensor) -> torch.Tensor:
    """Rotations R (det +1) with R @ v/|v| = (0, 1, 0): each edge onto e3nn's polar axis +y.

    The frame is the smallest rotation taking v̂ to +y when v̂_y > -1/2, and otherwise the
    smallest rotation taking F v̂ to +y composed with F = diag(-1, -1, 1) (a half turn about z),
    so both charts stay well conditioned; v̂ = +y gives the identity and v̂ = -y gives F. The map
    is deterministic and smooth except on the cone v̂_y = -1/2, where the roll about the edge
    jumps (no continuous choice exists on the whole sphere). SO(2)-equivariant layers do not
    depend on that roll. Zero vectors give the identity.

    Args:
        vectors: (..., 3) edge vectors (any length unit).

    Returns:
        (..., 3, 3) rotation matrices acting on column vectors; row 1 is v̂.
    """
    if vectors.ndim == 0 or vectors.shape[-1] != 3:
        raise ValueError(f"vectors must have shape (..., 3), got {tuple(vectors.shape)}")
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    flip = unit[..., 1] <= -0.5
    sign = torch.where(flip, -1.0, 1.0).to(unit.dtype)
    # In the flipped chart use u = F v̂ = (-x, -y, z), whose y component is >= 1/2.
    ux, uy, uz = sign * unit[..., 0], sign * unit[..., 1], unit[..., 2]
    # Smallest rotation taking u to +y: axis u × y = (-uz, 0, ux), cos = uy; Rodrigues with the
    # (1 - cos)/sin^2 = 1/(1 + cos) form, well conditioned since 1 + uy >= 1/2 (or u = 0).
    # R = I + [a]x + [a]x^2 / (1 + cos) with a = (-uz, 0, ux); the middle entry is written as
    # 1 - h (ux^2 + uz^2) (= uy for unit u) so that u = 0 gives the identity.
    h = 1.0 / (1.0 + uy)
    hxz = -h * ux * uz
    row0 = torch.stack([1.0 - h * ux * ux, -ux, hxz], -1)
    row1 = torch.stack([ux, 1.0 - h * (ux * ux + uz * uz), uz], -1)
    row2 = torch.stack([hxz, -uz, 1.0 - h * uz * uz], -1)
    rot = torch.stack([row0, row1, row2], -2)
    # Compose with F on the right: columns 0 and 1 change sign in the flipped chart.
    column_sign = torch.stack([sign, sign, torch.ones_like(sign)], -1).unsqueeze(-2)
    return rot * column_sign

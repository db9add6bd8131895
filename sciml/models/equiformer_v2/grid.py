"""Point-wise non-linearities of EquiformerV2 evaluated on a sphere grid.

Coefficients are sampled on a lat x long grid of the sphere (e3nn's ``ToS2Grid`` with
"component" normalisation, polar axis y), a function is applied at every grid point, and the
result is projected back (e3nn's ``FromS2Grid``). With orders truncated to |m| <= mmax, degrees
l > mmax are rescaled by sqrt((2l+1)/(2 mmax+1)) both ways, as fairchem's ``SO3_Grid`` does.
The non-linearity makes this only approximately equivariant; the error shrinks as the grid
grows.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from e3nn.o3 import FromS2Grid, ToS2Grid
from torch import nn

from sciml.models.equiformer_v2.layers import SO3Linear
from sciml.ops.so2 import m_major_order
from sciml.ops.tracing import is_tracing, modes_active


def grid_matrices(lmax: int, mmax: int, resolution: Optional[int] = None, m_major: bool = False):
    """Sampling and projection matrices, both (lat * long, K) in float64.

    K counts the coefficients with l <= lmax, |m| <= min(l, mmax): l-major (e3nn order, orders
    above mmax dropped), or m-major (:func:`sciml.ops.so2.m_major_order`) with ``m_major``.
    ``resolution`` sets lat = long; None uses fairchem's default lat = 2 (lmax+1),
    long = 2 mmax + 1 (2 (mmax+1) + 1 when mmax = lmax).
    """
    if resolution is None:
        lat = 2 * (lmax + 1)
        long = 2 * (mmax + 1) + 1 if lmax == mmax else 2 * mmax + 1
    else:
        lat = long = int(resolution)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds its tables in the default dtype
    try:
        to_grid = ToS2Grid(lmax, (lat, long), normalization="component")
        from_grid = FromS2Grid((lat, long), lmax, normalization="component")
        to_mat = torch.einsum("mbi,am->bai", to_grid.shb, to_grid.sha)
        from_mat = torch.einsum("am,mbi->bai", from_grid.sha, from_grid.shb)
    finally:
        torch.set_default_dtype(previous)
    kept = [(l, m) for l in range(lmax + 1) for m in range(-l, l + 1) if abs(m) <= mmax]
    if m_major:
        kept = list(m_major_order(lmax, mmax))
    columns = torch.tensor([l * l + l + m for l, m in kept])
    scale = torch.tensor([math.sqrt((2 * l + 1) / (2 * mmax + 1)) if l > mmax else 1.0 for l, _ in kept],
                         dtype=torch.float64)
    to_mat = to_mat.reshape(lat * long, -1)[:, columns] * scale
    from_mat = from_mat.reshape(lat * long, -1)[:, columns] * scale
    return to_mat, from_mat


class S2Grid(nn.Module):
    """Holds the grid matrices of :func:`grid_matrices` as buffers (G = lat * long points)."""

    def __init__(self, lmax: int, mmax: int, resolution: Optional[int] = None, m_major: bool = False):
        super().__init__()
        to_mat, from_mat = grid_matrices(lmax, mmax, resolution, m_major)
        # float64 constants, cast to the features' dtype where used, so a model built in
        # float32 and moved to float64 keeps exact tables.
        self.register_buffer("to_grid_mat", to_mat, persistent=False)
        self.register_buffer("from_grid_mat_t", from_mat.t().contiguous(), persistent=False)

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, C) coefficients -> (N, G, C) grid values."""
        return torch.matmul(self.to_grid_mat.to(x.dtype), x)

    def from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, G, C) grid values -> (N, K, C) coefficients."""
        return torch.matmul(self.from_grid_mat_t.to(grid.dtype), grid)


_CHUNK_ROWS = 1024  # (edge, channel) rows of grid values held at once: 1024 x G floats (1.3 MB at G = 324)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(E, K, C) -> (E C, K): one row per (edge, channel)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1])


class _GridSiLU(torch.autograd.Function):
    """y = P SiLU(S x) per (edge, channel) column, never storing the (E, G, C) grid values.

    The grid is evaluated in chunks of rows that stay in cache, as plain GEMMs over (E C) rows,
    and recomputed in the backward pass. The backward is written in differentiable torch ops,
    so higher derivatives (conservative forces in training) work, also under ``torch.func``
    (forces of compiled training, see :mod:`sciml.train.compile`).
    """

    @staticmethod
    def forward(x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
        return _grid_map(x, to_grid, from_grid, None)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, to_grid, from_grid = ctx.saved_tensors
        return _grid_map(x, to_grid, from_grid, grad), None, None


def _grid_map(x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor,
              grad: Optional[torch.Tensor]) -> torch.Tensor:
    """Forward: P SiLU(S x). With ``grad``: the gradient S^T (SiLU'(S x) * (P^T grad)).

    x, grad (E, K, C); to_grid S (G, K); from_grid P^T (G, K) (both as stored by S2Grid)."""
    edges, k, channels = x.shape
    rows, grad_rows = _rows(x), None if grad is None else _rows(grad)
    chunks = _row_chunks(rows.shape[0])
    if len(chunks) == 1:  # no buffer written in place: the form torch.func and tracing prefer
        out = _grid_rows(rows, grad_rows, to_grid, from_grid)
    else:
        out = torch.empty_like(rows)
        for chunk in chunks:
            out[chunk] = _grid_rows(rows[chunk], None if grad_rows is None else grad_rows[chunk], to_grid, from_grid)
    return out.view(edges, channels, k).transpose(1, 2)


def _grid_rows(rows: torch.Tensor, grad_rows: Optional[torch.Tensor], to_grid: torch.Tensor,
               from_grid: torch.Tensor) -> torch.Tensor:
    """:func:`_grid_map` of (R, K) rows: P SiLU(S r), or with ``grad_rows`` S^T (SiLU'(S r) * (P^T g))."""
    grid = rows @ to_grid.t()  # (R, G)
    if grad_rows is None:
        return nn.functional.silu(grid) @ from_grid
    sigmoid = torch.sigmoid(grid)
    slope = sigmoid * (1 + grid * (1 - sigmoid))  # d SiLU / d grid
    return ((grad_rows @ from_grid.t()) * slope) @ to_grid


def _row_chunks(rows: int) -> List[slice]:
    """Slices of ``_CHUNK_ROWS`` rows; a single one while tracing or under ``torch.func``, where
    the number of rows may be symbolic (a loop over it would fix it to the example's) and the
    compiler tiles by itself."""
    if is_tracing() or modes_active() or rows <= _CHUNK_ROWS:
        return [slice(None)]
    return [slice(start, start + _CHUNK_ROWS) for start in range(0, rows, _CHUNK_ROWS)]


class SeparableS2Activation(nn.Module):
    """SiLU of separate gating scalars for l = 0; SiLU on the grid for l > 0 (fairchem's
    ``SeparableS2Activation``). ``gates`` (E, C) and x (E, K, C) -> (E, K, C); coefficient 0 of
    x is l = 0 in both the l-major and the m-major layout."""

    def __init__(self, lmax: int, mmax: int, resolution: Optional[int] = None, m_major: bool = True):
        super().__init__()
        self.grid = S2Grid(lmax, mmax, resolution, m_major)

    def forward(self, gates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        to_grid = self.grid.to_grid_mat.to(x.dtype)
        from_grid = self.grid.from_grid_mat_t.to(x.dtype).t()  # (G, K)
        rest = _GridSiLU.apply(x, to_grid, from_grid)[:, 1:]
        return torch.cat([nn.functional.silu(gates).unsqueeze(1), rest], 1)


class GridFeedForward(nn.Module):
    """EquiformerV2's feed-forward network with a grid MLP (fairchem ``FeedForwardNetwork`` with
    ``use_grid_mlp`` and ``use_sep_s2_act``).

    SO3Linear(C -> H), then on the grid a point-wise Linear-SiLU-Linear-SiLU-Linear (no biases),
    back to coefficients, l = 0 replaced by SiLU(Linear(x_{l=0})), then SO3Linear(H -> C_out).
    (N, (lmax+1)^2, C) -> (N, (lmax+1)^2, C_out).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, lmax: int,
                 resolution: Optional[int] = None):
        super().__init__()
        self.lmax = lmax
        self.so3_linear_1 = SO3Linear(in_channels, hidden_channels, lmax)
        self.scalar_mlp = nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.SiLU())
        self.grid_mlp = nn.Sequential(
            nn.Linear(hidden_channels, hidden_channels, bias=False), nn.SiLU(),
            nn.Linear(hidden_channels, hidden_channels, bias=False), nn.SiLU(),
            nn.Linear(hidden_channels, hidden_channels, bias=False),
        )  # fmt: skip
        self.grid = S2Grid(lmax, lmax, resolution)
        self.so3_linear_2 = SO3Linear(hidden_channels, out_channels, lmax)

    def forward(self, x: torch.Tensor, scalars_only: bool = False) -> torch.Tensor:
        """With ``scalars_only`` only the l = 0 output (N, 1, C_out) is computed: it depends on
        the l = 0 input alone, so the grid is skipped (the energy head needs no more).

        The grid MLP's first and last linears (no biases) act on channels and the grid
        transforms on coefficients, so they commute: both run on the (N, K, H) coefficients
        instead of the (N, G, H) grid values (G = 324 points vs K = 25 coefficients at lmax 4).
        """
        scalars = self.scalar_mlp(x[:, 0]).unsqueeze(1)
        if scalars_only:
            return self.so3_linear_2(scalars, degrees=1)
        first, _, middle, _, last = self.grid_mlp
        grid = self.grid.to_grid(first(self.so3_linear_1(x)))
        grid = nn.functional.silu(middle(nn.functional.silu(grid)))
        hidden = last(self.grid.from_grid(grid)[:, 1:])
        return self.so3_linear_2(torch.cat([scalars, hidden], 1))

"""Layers of FNO and G-FNO: grid features, group pointwise maps, group instance norm and the
spectral convolutions.

Tensors are channels-first, ``(batch, channels, *grid)``; ``grid`` is (x, y) or (x, y, t) and
the group acts on (x, y). Group features ("regular" channels) are stored as ``channels x order``
with the group element as the minor index. With the trivial group every layer is the plain FNO
layer (the same code path with a group of one element).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sciml.models.gfno import _fused
from sciml.models.gfno.group import PointGroup

GRID_KINDS = ("symmetric", "cartesian", "none")


class GridFeatures(nn.Module):
    """Appends coordinate channels to a channels-last field: (B, *grid, C) -> (B, *grid, C + channels).

    Coordinates are ``linspace(0, 1, n)`` along each axis (the reference's grid). ``symmetric``:
    the squared distance (x - 1/2)^2 + (y - 1/2)^2 from the centre of the plane, invariant under
    the group's action (see :mod:`~sciml.models.gfno.group`), plus t for a time axis;
    ``cartesian``: x, y (and t), which breaks the symmetry; ``none``: nothing.
    """

    def __init__(self, kind: str, dims: int):
        super().__init__()
        if kind not in GRID_KINDS:
            raise ValueError(f"grid must be one of {', '.join(GRID_KINDS)}, got {kind!r}")
        self.kind = kind
        self.dims = dims
        self.channels = {"symmetric": dims - 1, "cartesian": dims, "none": 0}[kind]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        shape = x.shape[1:-1]
        axes = [torch.linspace(0, 1, n, dtype=x.dtype, device=x.device) for n in shape]
        coordinates = list(torch.meshgrid(*axes, indexing="ij"))
        if self.kind == "symmetric":
            coordinates = [(coordinates[0] - 0.5) ** 2 + (coordinates[1] - 0.5) ** 2] + coordinates[2:]
        grid = torch.stack(coordinates, -1).expand(x.shape[0], *shape, len(coordinates))
        return torch.cat([x, grid], -1)


class GroupLinear(nn.Module):
    """Pointwise (1 x 1) linear map between trivial and regular group features.

    ``(B, in_channels * |G_in|, *grid) -> (B, out_channels * |G_out|, *grid)`` where |G| is the
    group order on a ``"regular"`` side and 1 on a ``"trivial"`` side:

    * trivial -> regular (lifting): the same plain linear map for every element;
    * regular -> regular: out[o, h] = sum_{i, k} W[o, i, h^-1 k] in[i, k] + b[o];
    * regular -> trivial (projection): a plain linear map of the sum over the group axis.

    With the trivial group all three are ``nn.Conv*d(in, out, 1)``.
    """

    def __init__(self, in_channels: int, out_channels: int, group: PointGroup, input: str = "regular",
                 output: str = "regular"):
        super().__init__()
        for side in (input, output):
            if side not in ("regular", "trivial"):
                raise ValueError(f"GroupLinear sides are 'regular' or 'trivial', got {side!r}")
        self.group = group
        self.regular_in = input == "regular" and group.order > 1
        self.regular_out = output == "regular" and group.order > 1
        shared = self.regular_in and self.regular_out
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *((group.order,) if shared else ())))
        self.bias = nn.Parameter(torch.empty(out_channels))
        if shared:
            self.register_buffer("relative", group.relative(), persistent=False)
        bound = 1 / math.sqrt(in_channels * (group.order if self.regular_in else 1))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def matrix(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The map on flattened channels: weight (out_channels |G_out|, in_channels |G_in|) and bias
        (out_channels |G_out|,), the weight of regular -> regular built once with one gather."""
        order, weight, bias = self.group.order, self.weight, self.bias
        if self.regular_in and self.regular_out:
            out_channels, in_channels = weight.shape[:2]
            # (o, i, h, k) -> (o h, i k)
            weight = weight[:, :, self.relative].transpose(1, 2).reshape(out_channels * order, in_channels * order)
        elif self.regular_out:
            weight = weight.repeat_interleave(order, 0)
        elif self.regular_in:
            weight = weight.repeat_interleave(order, 1)
        return weight, (bias.repeat_interleave(order) if self.regular_out else bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, grid, order = x.shape[0], x.shape[2:], self.group.order
        x = x.reshape(batch, x.shape[1], -1)
        if self.regular_in and self.regular_out:
            weight, bias = self.matrix()
        else:
            weight, bias = self.weight, self.bias
            if self.regular_in:
                x = x.view(batch, -1, order, x.shape[-1]).sum(2)
        out = torch.baddbmm(bias[:, None], weight.expand(batch, *weight.shape), x)
        if self.regular_out and not self.regular_in:
            out = out.unsqueeze(2).expand(-1, -1, order, -1)
        return out.reshape(batch, -1, *grid)


class GroupInstanceNorm(nn.Module):
    """Instance norm of each channel over the group axis and the grid (no affine parameters):
    ``torch.nn.InstanceNorm3d`` on (B, C, |G|, *grid) as the reference; InstanceNorm2d for the
    trivial group. (B, C |G|, *grid) -> same."""

    def __init__(self, group: PointGroup, eps: float = 1e-5):
        super().__init__()
        self.order = group.order
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return F.instance_norm(x.reshape(shape[0], shape[1] // self.order, -1), eps=self.eps).view(shape)


class SpectralConvolution(nn.Module):
    """A Fourier layer: y = irfftn(W(k) rfftn(x)(k)) on a box of kept frequencies k,
    (B, in, *grid) -> (B, out, *grid). Subclasses give the box (:meth:`kept`) and the matrices
    W(k) (:meth:`spectral_weight`).

    Along the last axis (the rfft axis) frequencies ``0..modes[-1] - 1`` are kept, along every
    other axis ``-negative..positive - 1``. With so few kept frequencies the transforms are
    truncated DFTs done as matrix products, one axis at a time (the last axis as a real one):
    cheaper than zero-padded FFTs on the CPU, and so are their backward passes. The DFT matrices
    are built once per (size, frequencies, dtype, device) and cached.
    """

    in_channels: int
    out_channels: int
    modes: Tuple[int, ...]

    def kept(self) -> Tuple[Tuple[int, int], ...]:
        """(negative, positive) per axis but the last: frequencies -negative..positive - 1."""
        raise NotImplementedError

    def spectral_weight(self) -> torch.Tensor:
        """(P, in, out) complex: the matrix of each kept frequency, P of them in row-major box order."""
        raise NotImplementedError

    def plan(self, x: torch.Tensor) -> _fused.SpectralPlan:
        """The truncated transforms for ``x``'s grid, dtype and device (cached)."""
        grid = x.shape[2:]
        axes = tuple((_dft_matrix(negative, positive, grid[axis], False, x.dtype, x.device),
                      _dft_matrix(negative, positive, grid[axis], True, x.dtype, x.device))
                     for axis, (negative, positive) in enumerate(self.kept()))
        return _fused.SpectralPlan(_rdft_matrix(grid[-1], self.modes[-1], x.dtype, x.device),
                                   _irdft_matrix(grid[-1], self.modes[-1], x.dtype, x.device), axes,
                                   tuple(negative for negative, _ in self.kept()))

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None,
                shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The layer applied to ``x * scale + shift`` (see :meth:`spectrum`)."""
        plan = self.plan(x)
        spectrum = self.spectrum(x, scale, shift, plan)
        out = torch.view_as_real(spectrum).flatten(-2) @ plan.irdft
        return out.view(*spectrum.shape[:-1], x.shape[-1])

    def spectrum(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
                 plan: Optional[_fused.SpectralPlan] = None) -> torch.Tensor:
        """The layer's output before the last inverse transform: back on the grid along every axis
        but the last, frequencies 0..modes[-1] - 1 along it; (B, out, *grid[:-1], modes[-1]) complex.

        ``scale``, ``shift`` (B, in): the layer is applied to ``x * scale + shift`` (per sample and
        channel, e.g. an instance norm) without forming it: the transform is linear, so the kept
        spectrum is scaled and ``shift`` times the number of grid points added at frequency 0.
        """
        plan = self.plan(x) if plan is None else plan
        ft = _fused.transform(x, plan)
        if scale is not None or shift is not None:
            ft = _fused.affine_spectrum(ft, scale, shift, plan, math.prod(x.shape[2:]))
        return _fused.inverse_axes(_fused.mix(ft, self.spectral_weight()), plan)


def _angles(rows: torch.Tensor, columns: torch.Tensor, n: int) -> torch.Tensor:
    """2 pi (r c mod n) / n in float64, the product reduced exactly before the division."""
    return (2 * math.pi / n) * torch.remainder(torch.outer(rows, columns), n).double()


@functools.lru_cache(maxsize=64)
def _rdft_matrix(n: int, modes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n, 2 modes) real: frequencies 0..modes-1 of the real DFT of length n, columns (re, im) interleaved."""
    with torch.inference_mode(False):
        angle = _angles(torch.arange(n), torch.arange(modes), n)
        matrix = torch.stack([torch.cos(angle), -torch.sin(angle)], -1).reshape(n, 2 * modes)
        return matrix.to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _irdft_matrix(n: int, modes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(2 modes, n) real: ``torch.fft.irfft(z, n)`` for z holding frequencies 0..modes-1 (the rest
    zero) as (re, im) rows; the imaginary parts of frequency 0 (and n/2) are ignored as irfft does."""
    with torch.inference_mode(False):
        k = torch.arange(modes)
        weight = torch.where((k == 0) | (2 * k == n), 1.0, 2.0).double() / n  # Hermitian partners counted twice
        angle = _angles(k, torch.arange(n), n)
        matrix = torch.stack([torch.cos(angle), -torch.sin(angle)], 1) * weight[:, None, None]  # (modes, 2, n)
        return matrix.reshape(2 * modes, n).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _dft_matrix(negative: int, positive: int, n: int, inverse: bool, dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """The complex DFT of length n restricted to frequencies -negative..positive-1, (k, n); ``inverse``:
    its adjoint / n, (n, k), from those frequencies back to n points (the others zero)."""
    with torch.inference_mode(False):
        angle = _angles(torch.arange(-negative, positive), torch.arange(n), n)
        matrix = torch.polar(torch.ones_like(angle), -angle)
        if inverse:
            matrix = matrix.conj().T / n
        return matrix.to(dtype=torch.promote_types(dtype, torch.complex64), device=device).contiguous()


class SpectralConv(SpectralConvolution):
    """FNO's Fourier layer (Li et al. 2021), (B, in, *grid) -> (B, out, *grid).

    Keeps frequencies ``-modes..modes - 1`` along every axis but the last (the reference FNO's
    corners) and ``0..modes - 1`` along the last. ``weight``: real (*kept, in, out, 2), the real
    and imaginary parts of one free complex matrix per kept frequency (initialised as the
    reference, U(0, 1/(in out)) each).
    """

    def __init__(self, in_channels: int, out_channels: int, modes: Sequence[int]):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.modes = tuple(int(m) for m in modes)
        kept = tuple(2 * m for m in self.modes[:-1]) + self.modes[-1:]
        self.weight = nn.Parameter(torch.rand(*kept, in_channels, out_channels, 2) / (in_channels * out_channels))

    def kept(self) -> Tuple[Tuple[int, int], ...]:
        return tuple((m, m) for m in self.modes[:-1])

    def spectral_weight(self) -> torch.Tensor:
        return torch.view_as_complex(self.weight).reshape(-1, self.in_channels, self.out_channels)


class GroupSpectralConv(SpectralConvolution):
    """G-FNO's group spectral convolution (Helwig et al. 2023): regular -> regular group features,
    (B, in |G|, *grid) -> (B, out |G|, *grid), equivariant to the group acting on (x, y).

    A group convolution in Fourier space on the centred spectrum: frequencies -(m-1)..m-1 along
    x and y (t too in 3D), so rotating and reflecting a kernel is exactly rotating and reflecting
    its centred spectrum. Per (out, in, element) the kernel is Hermitian, W(-k) = conj W(k), so
    its spatial kernel is real; it is parametrised by one real array A on the full centred box
    (``weight``: (out, in, |G|, 2m-1, 2m-1[, 2m_t-1])) as W = (A + A_rev)/2 + i (A - A_rev)/2 with
    A_rev(k) = A(-k): a bijection, with (2m-1)^2 [(2m_t-1)] real numbers per kernel as in the
    reference. The full weight W[o h, i k](q) = W_{o, i, h^-1 k}(h^-1 q) is gathered once per
    forward, in its final layout, with one index_select; only the rfft half (last axis >= 0) is built.
    """

    def __init__(self, in_channels: int, out_channels: int, modes: Sequence[int], group: PointGroup):
        modes = tuple(int(m) for m in modes)
        if len(modes) < 2 or modes[0] != modes[1]:
            raise ValueError(f"the group needs equal modes along x and y, got {modes}")
        super().__init__()
        self.in_channels, self.out_channels = in_channels * group.order, out_channels * group.order
        self.modes, self.group = modes, group
        box = tuple(2 * m - 1 for m in modes)
        bound = 1 / math.sqrt(in_channels * group.order * math.prod(box))
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, group.order, *box).uniform_(-bound, bound))
        # the kernel (element, box position) of every entry of the full weight ...
        positions = torch.arange(math.prod(box)).view(box)
        rotated = torch.stack([group.act(positions, h, (0, 1))[..., modes[-1] - 1:].reshape(-1) for h in range(group.order)])
        relative = group.relative()  # [h, k] -> h^-1 k
        kernel = relative.T[None] * positions.numel() + rotated.T[:, None, :]  # (P, k, h)
        # ... and its place in the kernels flattened as (element, box, in, out), in the order (P, i k, o h)
        i = torch.arange(in_channels).view(1, -1, 1, 1, 1)
        o = torch.arange(out_channels).view(1, 1, 1, -1, 1)
        index = (kernel[:, None, :, None, :] * in_channels + i) * out_channels + o
        self.register_buffer("index", index.reshape(-1).to(torch.int32 if index.max() < 2 ** 31 else torch.int64),
                             persistent=False)

    def kept(self) -> Tuple[Tuple[int, int], ...]:
        return tuple((m - 1, m) for m in self.modes[:-1])

    def spectral_weight(self) -> torch.Tensor:
        reverse = self.weight.flip(tuple(range(3, self.weight.dim())))
        kernels = torch.complex((self.weight + reverse) / 2, (self.weight - reverse) / 2)
        kernels = kernels.permute(*range(2, self.weight.dim()), 1, 0).reshape(-1)  # (element, *box, in, out)
        return kernels.index_select(0, self.index).view(-1, self.in_channels, self.out_channels)


class GroupMLP(nn.Sequential):
    """Two pointwise maps with GELU between: regular (in) -> regular (hidden) -> ``output`` (out).

    Runs as one fused operation on a few samples at a time, the hidden features recomputed in the
    backward pass rather than stored (see :mod:`._fused`)."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, group: PointGroup,
                 output: str = "regular"):
        super().__init__(GroupLinear(in_channels, hidden_channels, group), nn.GELU(),
                         GroupLinear(hidden_channels, out_channels, group, output=output))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fused.mlp(x, *self[0].matrix(), *self[2].matrix())


class FourierBlock(nn.Module):
    """One FNO/G-FNO block as the reference: x -> act(mlp(norm(conv(norm(x)))) + skip(x)),
    (B, width |G|, *grid) -> same. ``norm`` (group instance norm) is off in the 3D models, as
    in the reference; ``activation`` (GELU) is off in the last block.

    Computed as one fused operation with a hand-written backward pass (:func:`._fused.fourier_block`):
    the first norm is applied to the kept spectrum, and the last inverse transform, the second norm,
    the MLP, the skip map and the activation run on a few samples at a time, so that no intermediate
    field of the whole batch is formed and the gradient of x is written once.
    """

    def __init__(self, conv: SpectralConvolution, width: int, group: PointGroup, norm: bool, activation: bool):
        super().__init__()
        self.conv = conv
        self.mlp = GroupMLP(width, width, width, group)
        self.skip = GroupLinear(width, width, group)
        self.norm = GroupInstanceNorm(group) if norm else nn.Identity()
        self.activation = nn.GELU() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = isinstance(self.norm, GroupInstanceNorm)
        (w1, b1), (w2, b2), (ws, bs) = self.mlp[0].matrix(), self.mlp[2].matrix(), self.skip.matrix()
        return _fused.fourier_block(x, self.conv.spectral_weight(), self.conv.plan(x), w1, b1, w2, ws, b2 + bs,
                                    self.skip.group.order, self.norm.eps if normed else None,
                                    isinstance(self.activation, nn.GELU))

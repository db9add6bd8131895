"""Building blocks of EquiformerV2 that act on one node or edge at a time.

Features are (N, (lmax+1)^2, C): real spherical-harmonic coefficients in e3nn's basis
(coefficient index l^2 + l + m), C channels. Names and numerics follow fairchem's
``equiformer_v2`` package (``radial_function.py``, ``so3.py``, ``layer_norm.py``,
``activation.py``, ``drop.py``), so fairchem weights load after renaming only.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def degree_index(lmax: int) -> torch.Tensor:
    """(lmax+1)^2 int64: the degree l of each coefficient (l-major layout)."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.int64) for l in range(lmax + 1)])


class RadialMLP(nn.Module):
    """Linear-LayerNorm-SiLU blocks ending in a Linear: ``channels = [in, hidden..., out]``.

    (E, in) -> (E, out). fairchem's ``RadialFunction`` (its linears are initialised
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with zero bias).
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"RadialMLP needs at least [in, out] channels, got {list(channels)}")
        layers = []
        for k, (n_in, n_out) in enumerate(zip(channels[:-1], channels[1:])):
            linear = nn.Linear(n_in, n_out)
            bound = 1.0 / math.sqrt(n_in)
            nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(linear.bias)
            layers.append(linear)
            if k < len(channels) - 2:
                layers += [nn.LayerNorm(n_out), nn.SiLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SO3Linear(nn.Module):
    """Per-degree linear map (N, (lmax+1)^2, C_in) -> (N, (lmax+1)^2, C_out), bias on l = 0 only.

    ``weight`` (lmax+1, C_out, C_in) holds one matrix per degree, shared by its 2l+1 orders
    (fairchem's ``SO3_LinearV2``). ``degrees`` restricts the output to l < degrees.
    """

    def __init__(self, in_features: int, out_features: int, lmax: int):
        super().__init__()
        self.in_features, self.out_features, self.lmax = in_features, out_features, lmax
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(lmax + 1, out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor, degrees: int | None = None) -> torch.Tensor:
        degrees = self.lmax + 1 if degrees is None else degrees
        parts = torch.split(x[:, : degrees * degrees], [2 * l + 1 for l in range(degrees)], dim=1)
        out = [torch.matmul(part, self.weight[l].t()) for l, part in enumerate(parts)]
        out[0] = out[0] + self.bias
        return torch.cat(out, 1) if len(out) > 1 else out[0]


class EquivariantLayerNorm(nn.Module):
    """Separable layer norm (fairchem ``layer_norm_sh``), computed in float32 under autocast.

    l = 0: LayerNorm over channels. l > 0, all degrees together: divide by the root of the mean
    over channels of sum_l (1 / (lmax (2l+1))) sum_m x_lm^2 (each degree weighted equally, no
    mean subtraction), then scale by a per-(l, channel) weight. (N, (lmax+1)^2, C) in and out.
    """

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.lmax, self.channels, self.eps = lmax, channels, eps
        self.norm_l0 = nn.LayerNorm(channels, eps=eps)
        if lmax > 0:
            self.affine_weight = nn.Parameter(torch.ones(lmax, channels))
            weights = 1.0 / (2.0 * degree_index(lmax)[1:].to(torch.get_default_dtype()) + 1.0) / lmax
            self.register_buffer("balance_degree_weight", weights.unsqueeze(1), persistent=False)
            self.register_buffer("affine_index", degree_index(lmax)[1:] - 1, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
            scalars = self.norm_l0(x[:, :1])
            if self.lmax == 0:
                return scalars.to(dtype)
            rest = x[:, 1:]
            weight = self.balance_degree_weight.to(rest.dtype)
            power = torch.einsum("nic,ia->nac", rest.pow(2), weight).mean(dim=2, keepdim=True)
            inverse = (power + self.eps).pow(-0.5)  # (N, 1, 1)
            scale = self.affine_weight.to(rest.dtype)[self.affine_index]
            return torch.cat([scalars, rest * inverse * scale], 1).to(dtype)


class SmoothLeakyReLU(nn.Module):
    """x (1 + a)/2 + x (1 - a)/2 (2 sigmoid(x) - 1): a smooth leaky ReLU, slope a for x << 0."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.negative_slope
        return (1 + a) / 2 * x + (1 - a) / 2 * x * (2 * torch.sigmoid(x) - 1)


class Dropout(nn.Module):
    """Element-wise dropout with probability ``p`` in training (x / (1-p) kept), drawn as torch's
    CPU dropout draws it (one ``bernoulli_`` mask of x's shape), but written with that mask: the
    native op cannot be traced under ``torch.func`` at symbolic sizes (compiled force training)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * torch.empty_like(x).bernoulli_(1.0 - self.p).div_(1.0 - self.p)


class GraphDropPath(nn.Module):
    """Stochastic depth per structure: in training, drop a residual branch for whole graphs with
    probability ``p`` and scale kept ones by 1/(1-p). x (N, ...) with ``batch`` (N,)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(num_graphs, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p) / (1.0 - self.p)
        return x * keep[batch].view(-1, *([1] * (x.ndim - 1)))

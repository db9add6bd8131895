"""Radial bases and smooth cutoff envelopes of edge lengths (Å), shared by all graph models."""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianBasis(nn.Module):
    """Gaussians exp(-(r - mu_k)^2 / (2 sigma^2)) on ``num_basis`` evenly spaced centres.

    ``width`` scales sigma relative to the centre spacing (sigma = width * spacing), as in
    SchNet/fairchem's GaussianSmearing. Input (E,) Å, output (E, num_basis).
    """

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_basis: int = 50, width: float = 1.0):
        super().__init__()
        if num_basis < 1:
            raise ValueError(f"num_basis must be >= 1, got {num_basis}")
        centres = torch.linspace(start, stop, num_basis)
        spacing = (stop - start) / max(num_basis - 1, 1)
        self.register_buffer("centres", centres)
        self.coeff = -0.5 / (width * spacing) ** 2

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * (lengths.unsqueeze(-1) - self.centres) ** 2)


class BesselBasis(nn.Module):
    """DimeNet's radial Bessel functions sqrt(2/c) sin(k pi r / c) / r, k = 1..num_basis.

    Input (E,) Å, output (E, num_basis). ``trainable`` makes the frequencies parameters.
    """

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = False):
        super().__init__()
        frequencies = math.pi * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) / cutoff
        if trainable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)
        self.prefactor = math.sqrt(2.0 / cutoff)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        r = lengths.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies * r) / r


class PolynomialEnvelope(nn.Module):
    """DimeNet's polynomial envelope u(x), x = r / cutoff, with u(1) = u'(1) = u''(1) = 0.

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0.
    Input (E,) Å, output (E,).
    """

    def __init__(self, cutoff: float, exponent: int = 5):
        super().__init__()
        if exponent < 1:
            raise ValueError(f"envelope exponent must be >= 1, got {exponent}")
        self.cutoff = float(cutoff)
        self.p = int(exponent)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = lengths / self.cutoff
        value = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
        return torch.where(x < 1, value, torch.zeros_like(value))


class CosineEnvelope(nn.Module):
    """Behler's cosine cutoff 0.5 (cos(pi r / cutoff) + 1) for r < cutoff, else 0. (E,) -> (E,)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        value = 0.5 * (torch.cos(math.pi * lengths / self.cutoff) + 1)
        return torch.where(lengths < self.cutoff, value, torch.zeros_like(value))

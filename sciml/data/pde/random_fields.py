"""Gaussian random fields on the periodic unit square (the initial vorticity of the FNO datasets)."""

from __future__ import annotations

import math

import torch


def gaussian_random_field(
    num: int,
    resolution: int,
    alpha: float = 2.5,
    tau: float = 7.0,
    sigma: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Samples of the zero-mean Gaussian random field ``N(0, sigma^2 (-Laplacian + tau^2)^(-alpha))``.

    This is the field of FNO's ``GaussianRF`` (Li et al. 2021, ``data_generation/navier_stokes``):
    Fourier coefficients ``sqrt_eig(k) * c_k`` with complex standard normal ``c_k`` (real and
    imaginary parts of variance 1/2), ``sqrt_eig = n^2 sqrt(2) sigma (4 pi^2 |k|^2 + tau^2)^(-alpha/2)``,
    the mean mode set to zero, and the real part of the inverse FFT taken. The defaults
    (``alpha = 2.5``, ``tau = 7``, ``sigma = tau^(alpha - 1)``) are those of the Navier-Stokes data.

    Samples are drawn one at a time from a CPU generator seeded with ``seed``, so the first ``m``
    fields of ``num`` samples equal the ``m`` samples of a smaller call, on any device.

    Args:
        num: number of fields.
        resolution: grid points per side ``n``; point ``(i, j)`` is at ``(i / n, j / n)``.
        alpha, tau: smoothness and inverse length scale of the covariance.
        sigma: amplitude; ``tau^(0.5 (2 alpha - 2))`` when None (FNO's default in 2D).
        seed: seed of the random stream.

    Returns:
        ``(num, n, n)`` tensor of ``dtype`` on ``device``.
    """
    if sigma is None:
        sigma = tau ** (0.5 * (2.0 * alpha - 2.0))
    k = torch.fft.fftfreq(resolution, 1.0 / resolution, dtype=torch.float64)
    k_squared = k[:, None] ** 2 + k[None, :] ** 2
    sqrt_eig = resolution**2 * math.sqrt(2.0) * sigma * (4.0 * math.pi**2 * k_squared + tau**2) ** (-alpha / 2.0)
    sqrt_eig[0, 0] = 0.0
    generator = torch.Generator().manual_seed(seed)
    fields = torch.empty(num, resolution, resolution, dtype=torch.float64)
    for i in range(num):
        normal = torch.randn(2, resolution, resolution, generator=generator, dtype=torch.float64)
        coefficients = sqrt_eig * torch.complex(normal[0], normal[1]) / math.sqrt(2.0)
        fields[i] = torch.fft.ifft2(coefficients).real
    return fields.to(dtype=dtype, device=device)

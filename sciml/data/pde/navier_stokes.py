"""Batched pseudo-spectral solver of the 2D incompressible Navier-Stokes equations in vorticity form.

On the periodic unit square the vorticity ``w(x, y, t)`` obeys

    dw/dt + u . grad w = nu Laplacian w + f,      u = (d psi/dy, -d psi/dx),   -Laplacian psi = w,

the equations of the FNO (Li et al. 2021) and G-FNO (Helwig et al. 2023) Navier-Stokes datasets.
The scheme is theirs (``data_generation/navier_stokes/ns_2d.py``): Fourier (rfft2) space,
``psi_hat = w_hat / (4 pi^2 |k|^2)``, the advection term evaluated on the grid and dealiased with
the 2/3 rule (``|k_x|, |k_y| <= 2/3 floor(n/2)``), Crank-Nicolson for the viscous term and an explicit
step for advection + forcing: forward Euler as in FNO (``scheme="euler"``, first order in time) or
Heun's predictor-corrector (``scheme="heun"``, second order, twice the cost per step).

Two deliberate differences from the reference script: the mean vorticity (the ``k = 0`` mode) is
left untouched by the viscous step (FNO sets ``|k|^2 = 1`` there, which slowly damps a non-zero
mean), and derivatives drop the Nyquist wavenumber ``n/2`` (whose sign is ambiguous on the grid),
which keeps the discrete equations exactly equivariant under the grid rotations and reflections of
:mod:`sciml.data.pde.symmetry`.

Symmetries: with a forcing invariant under a 90-degree rotation about the origin (``"symmetric"``
or none) the solver commutes with :func:`~sciml.data.pde.symmetry.rotate90_periodic` to round-off.
Vorticity is a pseudo-scalar, so a reflection maps a solution ``w`` to ``-reflect(w)``, a solution
with forcing ``-reflect(f)``: unforced flows are reflection-equivariant in that sense, while the
symmetric forcing (even under ``x -> -x``) is not.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from sciml.data.pde.random_fields import gaussian_random_field

FORCINGS = ("fno", "symmetric", "none")
Forcing = Literal["fno", "symmetric", "none"]
Scheme = Literal["euler", "heun"]


def forcing_field(
    name: Forcing, resolution: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> torch.Tensor | None:
    """The forcing ``f(x, y)`` on the grid ``x_i = i / n``, as ``(n, n)``; None for ``"none"``.

    ``"fno"``: ``0.1 (sin 2 pi (x + y) + cos 2 pi (x + y))`` (FNO's datasets; no rotation symmetry).
    ``"symmetric"``: ``0.1 (cos 4 pi x + cos 4 pi y)`` (G-FNO's NS-sym, period 4; invariant under
    90-degree rotations and reflections about the origin).
    """
    if name == "none":
        return None
    x = torch.arange(resolution, dtype=torch.float64) / resolution
    x, y = torch.meshgrid(x, x, indexing="ij")
    if name == "fno":
        field = 0.1 * (torch.sin(2 * math.pi * (x + y)) + torch.cos(2 * math.pi * (x + y)))
    elif name == "symmetric":
        field = 0.1 * (torch.cos(4 * math.pi * x) + torch.cos(4 * math.pi * y))
    else:
        raise ValueError(f"unknown forcing {name!r}; choose one of {', '.join(FORCINGS)}")
    return field.to(dtype=dtype, device=device)


def _whole_steps(duration: float, dt: float, what: str) -> int:
    steps = round(duration / dt)
    if steps < 1 or abs(steps * dt - duration) > 1e-9 * max(duration, 1.0):
        raise ValueError(f"{what} = {duration} is not a positive whole number of time steps dt = {dt}")
    return steps


class _SpectralOperators:
    """Wavenumber operators of an ``n x n`` periodic grid in rfft2 layout ``(n, n // 2 + 1)``."""

    def __init__(self, n: int, viscosity: float, dt: float, dtype: torch.dtype, device: torch.device) -> None:
        k_x = torch.fft.fftfreq(n, 1.0 / n, dtype=dtype, device=device)[:, None]
        k_y = torch.fft.rfftfreq(n, 1.0 / n, dtype=dtype, device=device)[None, :]
        laplacian = 4 * math.pi**2 * (k_x**2 + k_y**2)  # minus the Laplacian
        inverse_laplacian = torch.where(laplacian > 0, 1.0 / laplacian.clamp_min(1e-30), 0.0)
        # the Nyquist wavenumber has no sign on the grid: drop it from derivatives
        d_x = 2j * math.pi * torch.where(k_x.abs() == n / 2, 0.0, k_x)
        d_y = 2j * math.pi * torch.where(k_y.abs() == n / 2, 0.0, k_y)
        # u = d psi / dy, v = -d psi / dx, then d w / dx and d w / dy
        self.gradients = torch.stack(
            torch.broadcast_tensors(d_y * inverse_laplacian, -d_x * inverse_laplacian, d_x, d_y)
        )
        cutoff = 2.0 / 3.0 * (n // 2)
        self.dealias = ((k_x.abs() <= cutoff) & (k_y.abs() <= cutoff)).to(dtype)
        half_viscous = 0.5 * dt * viscosity * laplacian
        self.decay = (1.0 - half_viscous) / (1.0 + half_viscous)
        self.dt_implicit = dt / (1.0 + half_viscous)
        self.n = n

    def advection(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Dealiased Fourier coefficients of ``u . grad w``; ``w_hat``: ``(B, n, n // 2 + 1)``."""
        u, v, w_x, w_y = torch.fft.irfft2(self.gradients * w_hat[:, None], s=(self.n, self.n)).unbind(1)
        return self.dealias * torch.fft.rfft2(u * w_x + v * w_y)


def solve_navier_stokes(
    w0: torch.Tensor,
    viscosity: float,
    forcing: torch.Tensor | None,
    t_final: float,
    dt: float,
    record_every: float,
    output_resolution: int | None = None,
    scheme: Scheme = "euler",
) -> torch.Tensor:
    """Integrate the vorticity equation from ``w0`` and record snapshots.

    Args:
        w0: ``(B, n, n)`` initial vorticity on the grid ``x_i = i / n`` (any real dtype and device;
            the solve runs in that dtype, float64 for round-off level symmetry checks).
        viscosity: ``nu`` (1/Re), e.g. 1e-3 or 1e-4 as in FNO's datasets.
        forcing: ``(n, n)`` or ``(B, n, n)`` vorticity forcing ``f`` (see :func:`forcing_field`), or None.
        t_final: final time, a whole number of steps ``dt``.
        dt: time step (FNO and G-FNO use 1e-4; see the README for the error of larger steps).
        record_every: time between snapshots, a whole number of steps that divides ``t_final``.
        output_resolution: record on a coarser grid ``w[::s, ::s]`` with ``s = n / output_resolution``
            (keeps the grid origin); the solver grid when None.
        scheme: explicit part of the step, ``"euler"`` (FNO's) or ``"heun"`` (second order).

    Returns:
        ``(B, m, m, T)`` vorticity at ``t = record_every, 2 record_every, ..., t_final``
        (``T = t_final / record_every``; the initial state is not included, as in FNO's ``u``).

    Raises:
        ValueError: inconsistent shapes or times.
        FloatingPointError: the solution blew up (decrease ``dt``).
    """
    if w0.ndim != 3 or w0.shape[1] != w0.shape[2]:
        raise ValueError(f"w0 must be (batch, n, n) on a square grid, got shape {tuple(w0.shape)}")
    if scheme not in ("euler", "heun"):
        raise ValueError(f"unknown scheme {scheme!r}; choose euler or heun")
    n = w0.shape[-1]
    stride = 1 if output_resolution is None else n // output_resolution
    if output_resolution is not None and (output_resolution < 1 or n % output_resolution):
        raise ValueError(f"output_resolution {output_resolution} does not divide the solver resolution {n}")
    steps = _whole_steps(t_final, dt, "t_final")
    steps_per_record = _whole_steps(record_every, dt, "record_every")
    if steps % steps_per_record:
        raise ValueError(f"record_every = {record_every} does not divide t_final = {t_final}")

    ops = _SpectralOperators(n, viscosity, dt, w0.dtype, w0.device)
    w_hat = torch.fft.rfft2(w0)
    f_hat = torch.zeros_like(w_hat[:1]) if forcing is None else torch.fft.rfft2(forcing.to(w0)).expand_as(w_hat)
    records = []
    for step in range(1, steps + 1):
        advection = ops.advection(w_hat)
        w_next = ops.decay * w_hat + ops.dt_implicit * (f_hat - advection)
        if scheme == "heun":
            advection = 0.5 * (advection + ops.advection(w_next))
            w_next = ops.decay * w_hat + ops.dt_implicit * (f_hat - advection)
        w_hat = w_next
        if step % steps_per_record == 0:
            w = torch.fft.irfft2(w_hat, s=(n, n))[:, ::stride, ::stride]
            if not torch.isfinite(w).all():
                raise FloatingPointError(f"the vorticity blew up by t = {step * dt:g}; decrease dt (now {dt:g})")
            records.append(w)
    return torch.stack(records, dim=-1)


def generate_navier_stokes(
    num: int,
    resolution: int = 64,
    solver_resolution: int = 256,
    viscosity: float = 1e-4,
    forcing: Forcing = "symmetric",
    t_final: float = 30.0,
    record_every: float = 1.0,
    dt: float = 1e-4,
    scheme: Scheme = "euler",
    batch_size: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor | float | str]:
    """A Navier-Stokes dataset in the layout of FNO's ``.mat`` files.

    Initial vorticities are :func:`gaussian_random_field` samples (alpha 2.5, tau 7) at
    ``solver_resolution``; each batch is solved there and subsampled to ``resolution``. The
    defaults are G-FNO's NS-sym setup (nu 1e-4, symmetric forcing, 256 -> 64, T = 30 with one
    snapshot per time unit, dt 1e-4).

    Returns:
        ``vorticity``: ``(num, resolution, resolution, T)`` (FNO's ``u``) on CPU;
        ``initial``: ``(num, resolution, resolution)`` initial vorticity (FNO's ``a``);
        ``t``: ``(T,)`` snapshot times; ``viscosity``; ``forcing`` (its name).
    """
    if forcing not in FORCINGS:
        raise ValueError(f"unknown forcing {forcing!r}; choose one of {', '.join(FORCINGS)}")
    if resolution < 1 or solver_resolution % resolution:
        raise ValueError(f"resolution {resolution} does not divide the solver resolution {solver_resolution}")
    stride = solver_resolution // resolution
    w0 = gaussian_random_field(num, solver_resolution, seed=seed, dtype=dtype)
    f = forcing_field(forcing, solver_resolution, dtype=dtype, device=device)
    vorticity = torch.cat([
        solve_navier_stokes(batch.to(device), viscosity, f, t_final, dt, record_every,
                            output_resolution=resolution, scheme=scheme).cpu()
        for batch in w0.split(batch_size)
    ])
    times = record_every * torch.arange(1, vorticity.shape[-1] + 1, dtype=torch.float64)
    return {
        "vorticity": vorticity,
        "initial": w0[:, ::stride, ::stride].clone(),
        "t": times,
        "viscosity": viscosity,
        "forcing": forcing,
    }

"""Molecular dynamics and relaxation drivers around ase, used by the CLI and benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from ase import units

from sciml.io.files import write_extxyz


@dataclass
class MDReport:
    """Energies along an MD run. Drift is (E_last - E_first) / atoms, eV/atom; time in fs."""

    steps: int
    atoms: int
    timestep_fs: float
    total_energy: np.ndarray
    temperature: np.ndarray
    seconds: float

    @property
    def drift_per_atom(self) -> float:
        return float((self.total_energy[-1] - self.total_energy[0]) / self.atoms)

    @property
    def fluctuation_per_atom(self) -> float:
        return float(np.std(self.total_energy) / self.atoms)

    def summary(self) -> str:
        rate = self.steps / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"MD: {self.steps} steps x {self.timestep_fs} fs, {self.atoms} atoms, "
            f"mean T {np.mean(self.temperature):.1f} K\n"
            f"total energy drift {1e3 * self.drift_per_atom:+.3f} meV/atom over {self.steps * self.timestep_fs:.0f} fs "
            f"(std {1e3 * self.fluctuation_per_atom:.3f} meV/atom); {rate:.1f} steps/s, {rate * self.atoms:.0f} atom-steps/s"
        )


def run_md(
    atoms,
    steps: int,
    timestep_fs: float = 0.5,
    temperature_K: float = 300.0,
    ensemble: str = "nve",
    friction_per_fs: float = 0.01,
    seed: int = 0,
    trajectory: Optional[Path] = None,
) -> MDReport:
    """Run NVE (velocity Verlet) or Langevin MD on ``atoms`` (with a calculator attached).

    Velocities start Maxwell-Boltzmann at ``temperature_K`` (seeded). The trajectory, if asked, is
    written as extxyz atomically at the end.
    """
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    thermalize_momenta(atoms, temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    if ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    elif ensemble == "langevin":
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                       friction=friction_per_fs / units.fs, rng=np.random.default_rng(seed + 1))
    else:
        raise ValueError(f"unknown ensemble {ensemble!r}; use 'nve' or 'langevin'")
    energies, temperatures, frames = [], [], []

    def record():
        energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        temperatures.append(atoms.get_temperature())
        if trajectory is not None:
            frames.append(atoms.copy())
            frames[-1].calc = None

    dyn.attach(record, interval=1)  # ase also calls it once before the first step
    start = time.perf_counter()
    dyn.run(steps)
    seconds = time.perf_counter() - start
    if trajectory is not None:
        write_extxyz(trajectory, frames)
    return MDReport(steps, len(atoms), timestep_fs, np.array(energies), np.array(temperatures), seconds)


def relax(atoms, fmax: float = 0.05, steps: int = 500, cell: bool = False, output: Optional[Path] = None) -> Tuple[int, bool]:
    """BFGS relaxation (with a FrechetCellFilter when ``cell``); returns (steps, converged)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    if cell and not atoms.pbc.all():
        raise ValueError("--cell needs a structure periodic in all three directions")
    target = FrechetCellFilter(atoms) if cell else atoms
    optimizer = BFGS(target, logfile=None)
    converged = bool(optimizer.run(fmax=fmax, steps=steps))
    if output is not None:
        write_extxyz(output, [atoms])
    return optimizer.nsteps, converged

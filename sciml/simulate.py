"""Molecular dynamics and relaxation drivers around ase, used by the CLI and benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from ase import units

from sciml.io.files import write_extxyz
from sciml.md_log import ENSEMBLES


THERMOSTATTED = ("langevin", "nvt-bussi", "nose-hoover", "npt", "npt-berendsen")


@dataclass
class MDReport:
    """Running statistics of an MD run, accumulated step by step (nothing kept per step).

    Energies in eV, temperatures in K, times in fs. Drift is (E_last - E_first) / atoms of the total
    energy (potential + kinetic), eV/atom; meaningful as conservation only for ``nve``.
    """

    steps: int
    atoms: int
    timestep_fs: float
    seconds: float = 0.0
    ensemble: str = "nve"
    samples: int = 0
    first_energy: float = float("nan")
    last_energy: float = float("nan")
    _mean_energy: float = 0.0
    _m2_energy: float = 0.0
    _sum_temperature: float = 0.0
    start_time_fs: float = 0.0
    frames_written: int = 0

    def add(self, total_energy: float, temperature: float) -> None:
        """Account one step (Welford update of the energy mean/variance)."""
        self.samples += 1
        if self.samples == 1:
            self.first_energy = total_energy
        self.last_energy = total_energy
        delta = total_energy - self._mean_energy
        self._mean_energy += delta / self.samples
        self._m2_energy += delta * (total_energy - self._mean_energy)
        self._sum_temperature += temperature

    @property
    def mean_temperature(self) -> float:
        return self._sum_temperature / self.samples if self.samples else float("nan")

    @property
    def drift_per_atom(self) -> float:
        return float((self.last_energy - self.first_energy) / self.atoms)

    @property
    def fluctuation_per_atom(self) -> float:
        return float(np.sqrt(self._m2_energy / self.samples) / self.atoms) if self.samples else float("nan")

    def summary(self) -> str:
        rate = self.steps / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"MD ({self.ensemble}): {self.steps} steps x {self.timestep_fs} fs, {self.atoms} atoms, "
            f"mean T {self.mean_temperature:.1f} K\n"
            f"total energy drift {1e3 * self.drift_per_atom:+.3f} meV/atom over {self.steps * self.timestep_fs:.0f} fs "
            f"(std {1e3 * self.fluctuation_per_atom:.3f} meV/atom); {rate:.1f} steps/s, {rate * self.atoms:.0f} atom-steps/s"
        )


@dataclass
class MDSettings:
    """Parameters of :func:`run_md` beyond the structure, with their units.

    ``temperature_K``: initial velocities (fresh runs) and thermostat target, K. ``friction_per_fs``:
    Langevin friction, 1/fs. ``taut_fs``: thermostat time constant (Bussi, Nose-Hoover chain, NPT), fs.
    ``pressure_GPa``: NPT target pressure, GPa. ``taup_fs``: barostat time constant, fs.
    ``compressibility_per_GPa``: Berendsen barostat compressibility, 1/GPa (about 1/bulk modulus).
    ``cell``: MTK NPT cell fluctuations, ``isotropic`` (shape kept) or ``full`` (all nine components).
    """

    timestep_fs: float = 0.5
    temperature_K: float = 300.0
    ensemble: str = "nve"
    friction_per_fs: float = 0.01
    taut_fs: float = 100.0
    pressure_GPa: float = 0.0
    taup_fs: float = 1000.0
    compressibility_per_GPa: float = 0.01
    cell: str = "isotropic"
    seed: int = 0
    interval: int = 1

    def check(self, atoms) -> None:
        """Raise ValueError for settings that cannot run on ``atoms`` (before anything is written)."""
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {self.ensemble!r}; use one of {', '.join(ENSEMBLES)}")
        positive = {"timestep": self.timestep_fs, "interval": self.interval}
        if self.ensemble == "langevin":
            positive["friction"] = self.friction_per_fs
        if self.ensemble in ("nvt-bussi", "nose-hoover", "npt", "npt-berendsen"):
            positive["taut"] = self.taut_fs
        if self.ensemble in ("npt", "npt-berendsen"):
            positive["taup"] = self.taup_fs
        if self.ensemble == "npt-berendsen":
            positive["compressibility"] = self.compressibility_per_GPa
        if self.ensemble in THERMOSTATTED:
            positive["temperature"] = self.temperature_K
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"--{name} must be > 0, got {value}")
        if self.temperature_K < 0:
            raise ValueError(f"--temperature must be >= 0 K, got {self.temperature_K}")
        if self.ensemble.startswith("npt") and not atoms.pbc.all():
            raise ValueError(f"{self.ensemble} needs a structure periodic in all three directions "
                             f"(pbc is {atoms.pbc.tolist()})")
        if self.ensemble == "npt" and atoms.constraints:
            raise ValueError("npt (ase's MTK barostat) does not support fixed atoms or other constraints; "
                             "use --ensemble npt-berendsen")
        if self.cell not in ("isotropic", "full"):
            raise ValueError(f"cell fluctuations must be 'isotropic' or 'full', got {self.cell!r}")
        if fixed_indices(atoms).size == len(atoms):
            raise ValueError("every atom is fixed; nothing can move")


def fixed_indices(atoms) -> np.ndarray:
    """Indices of the atoms held fixed by FixAtoms constraints on ``atoms``."""
    from ase.constraints import FixAtoms

    fixed = [c.get_indices() for c in atoms.constraints if isinstance(c, FixAtoms)]
    return np.unique(np.concatenate(fixed)).astype(int) if fixed else np.zeros(0, dtype=int)


def fix_tags(atoms, tags: Sequence[int]) -> int:
    """Add a FixAtoms constraint on the atoms whose tag is in ``tags`` (OC20 slabs: 0 = subsurface);
    returns how many atoms are fixed. ValueError when no atom has such a tag."""
    from ase.constraints import FixAtoms

    mask = np.isin(atoms.get_tags(), list(tags))
    if not mask.any():
        raise ValueError(f"--fix-tags {' '.join(map(str, tags))}: no atom has such a tag "
                         f"(tags present: {sorted(set(atoms.get_tags().tolist()))})")
    atoms.set_constraint(list(atoms.constraints) + [FixAtoms(mask=mask)])
    return int(mask.sum())


def _nose_hoover(atoms, dt: float, temperature_K: float, tdamp: float):
    """ase's NoseHooverChainNVT made to honour constraints.

    The chain integrates its own copies of positions and momenta and asks ase for forces with
    ``md=True``, which leaves FixAtoms out (ordinary ase MD relies on ``set_momenta`` instead), so
    fixed atoms would gather momentum inside the integrator and feed it to the thermostat. Here the
    forces are constrained, and the chain's target kinetic energy is counted over the degrees of
    freedom the constraints leave (ase counts 3N). Without constraints this is ase's integrator as is.
    """
    from ase.md.nose_hoover_chain import NoseHooverChainNVT, NoseHooverChainThermostat

    class ConstrainedNoseHooverChainNVT(NoseHooverChainNVT):
        def _get_forces(self) -> np.ndarray:
            self._update_atoms()
            return self.atoms.get_forces()  # constraints applied (FixAtoms: zero force)

    dyn = ConstrainedNoseHooverChainNVT(atoms, dt, temperature_K=temperature_K, tdamp=tdamp)
    dof = atoms.get_number_of_degrees_of_freedom()
    if dof != 3 * len(atoms):
        dyn._thermostat = NoseHooverChainThermostat(num_atoms_global=dof / 3, masses=dyn.masses,
                                                    temperature_K=temperature_K, tdamp=tdamp, tchain=3, tloop=1)
    return dyn


def make_dynamics(atoms, settings: MDSettings):
    """The ase dynamics object of ``settings.ensemble`` (see :data:`ENSEMBLES`) on ``atoms``."""
    s = settings
    dt = s.timestep_fs * units.fs
    rng = np.random.default_rng(s.seed + 1)
    if s.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if s.ensemble == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=s.temperature_K, friction=s.friction_per_fs / units.fs,
                        fixcm=False, rng=rng)
    if s.ensemble == "nvt-bussi":
        from ase.md.bussi import Bussi

        return Bussi(atoms, dt, temperature_K=s.temperature_K, taut=s.taut_fs * units.fs, rng=rng)
    if s.ensemble == "nose-hoover":
        return _nose_hoover(atoms, dt, s.temperature_K, s.taut_fs * units.fs)
    if s.ensemble == "npt":
        from ase.md.nose_hoover_chain import IsotropicMTKNPT, MTKNPT

        cls = IsotropicMTKNPT if s.cell == "isotropic" else MTKNPT
        return cls(atoms, dt, temperature_K=s.temperature_K, pressure_au=s.pressure_GPa * units.GPa,
                   tdamp=s.taut_fs * units.fs, pdamp=s.taup_fs * units.fs)
    if s.ensemble == "npt-berendsen":
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=s.temperature_K, pressure_au=s.pressure_GPa * units.GPa,
                            taut=s.taut_fs * units.fs, taup=s.taup_fs * units.fs,
                            compressibility_au=s.compressibility_per_GPa / units.GPa, fixcm=False)
    raise ValueError(f"unknown ensemble {s.ensemble!r}; use one of {', '.join(ENSEMBLES)}")


def _stress(atoms) -> Optional[np.ndarray]:
    """The calculator's stress (eV/Å³, Voigt) for a periodic structure, None otherwise or if not given."""
    from ase.calculators.calculator import PropertyNotImplementedError

    if not atoms.pbc.any():
        return None
    try:
        return np.asarray(atoms.get_stress(), dtype=float)
    except PropertyNotImplementedError:
        return None


def run_md(
    atoms,
    steps: int,
    timestep_fs: float = 0.5,
    temperature_K: float = 300.0,
    ensemble: str = "nve",
    friction_per_fs: float = 0.01,
    seed: int = 0,
    trajectory: Optional[Path] = None,
    log: Optional[Path] = None,
    interval: int = 1,
    settings: Optional[MDSettings] = None,
    restart: bool = False,
) -> MDReport:
    """Run MD on ``atoms`` (with a calculator attached), streaming frames and log rows to disk.

    ``ensemble`` is one of :data:`ENSEMBLES`; ``settings`` (an :class:`MDSettings`) overrides the
    keyword parameters and gives the thermostat/barostat ones. A fresh run draws Maxwell-Boltzmann
    velocities at ``temperature_K`` (seeded), removes the centre-of-mass momentum (and the rotation of a
    non-periodic structure) and starts at time 0; with ``restart`` the momenta and ``info['time_fs']``/
    ``info['step']`` of ``atoms`` (a frame of :func:`sciml.md_log.read_last_frame`) continue and the
    files are appended to. Every ``interval`` steps (and at the start of a fresh run) a frame goes to
    ``trajectory`` (extxyz or ase .traj by suffix, flushed per frame) with energy (eV), forces (eV/Å),
    stress (eV/Å³, periodic), ``temperature_K`` and ``time_fs``, and a row to ``log`` (see
    :mod:`sciml.md_log`). Constraints on ``atoms`` (e.g. FixAtoms) are honoured by every ensemble.
    The report's statistics are accumulated each step, so memory does not grow with ``steps``.
    """
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    from sciml.md_log import MDLog, TrajectoryWriter, frame_snapshot, truncate_log_after, truncate_partial_tail

    if settings is None:
        settings = MDSettings(timestep_fs=timestep_fs, temperature_K=temperature_K, ensemble=ensemble,
                              friction_per_fs=friction_per_fs, seed=seed, interval=interval)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    settings.check(atoms)
    if restart:
        if not atoms.has("momenta"):
            raise ValueError("a restart needs the momenta of the last frame")
        start_step = int(atoms.info.get("step", 0))
        start_time = float(atoms.info.get("time_fs", 0.0))
    else:
        start_step, start_time = 0, 0.0
        thermalize_momenta(atoms, settings.temperature_K, rng=np.random.default_rng(settings.seed))
        Stationary(atoms)
        if not atoms.pbc.any():
            ZeroRotation(atoms)
        atoms.set_momenta(atoms.get_momenta())  # zero the momenta of fixed atoms again
    dyn = make_dynamics(atoms, settings)
    periodic = bool(atoms.pbc.all())
    writer = logger = None
    if trajectory is not None:
        if restart:
            truncate_partial_tail(trajectory)
        writer = TrajectoryWriter(trajectory, append=restart)
    if log is not None:
        if restart:
            truncate_log_after(log, start_time)
        logger = MDLog(log, periodic, append=restart)
    report = MDReport(steps, len(atoms), settings.timestep_fs, ensemble=settings.ensemble, start_time_fs=start_time)

    def observe() -> None:
        done = dyn.nsteps
        step = start_step + done
        time_fs = start_time + done * settings.timestep_fs
        epot = float(atoms.get_potential_energy())
        ekin = float(atoms.get_kinetic_energy())
        temperature = float(atoms.get_temperature())
        report.add(epot + ekin, temperature)
        if done % settings.interval or (restart and done == 0):
            return  # a restart's first state is the frame it continues from, already written
        stress = _stress(atoms)
        if logger is not None:
            row = {"time_fs": time_fs, "step": step, "epot_eV": epot, "ekin_eV": ekin, "etot_eV": epot + ekin,
                   "temperature_K": temperature}
            if periodic:
                full = atoms.get_stress(include_ideal_gas=True) if stress is not None else np.full(6, np.nan)
                row["pressure_GPa"] = float(-np.mean(full[:3]) / units.GPa)
                row["volume_A3"] = float(atoms.get_volume())
            logger.row(row)
        if writer is not None:
            writer.write(frame_snapshot(atoms, step, time_fs, temperature, stress))
            report.frames_written += 1

    dyn.attach(observe, interval=1)  # ase also calls it once before the first step
    start = time.perf_counter()
    try:
        dyn.run(steps)
    finally:
        report.seconds = time.perf_counter() - start
        for handle in (writer, logger):
            if handle is not None:
                handle.close()
    return report


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

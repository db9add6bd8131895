"""Molecular dynamics with GFN-xTB (tblite) as a source of energy/force training data.

Frames are sampled from Langevin (NVT) dynamics. Each frame carries its potential energy (eV) and
forces (eV/Å) in a :class:`~ase.calculators.singlepoint.SinglePointCalculator`, so that
``ase.io.write(..., format="extxyz")`` stores them as the plain ``energy`` and ``forces`` fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import molecule as build_molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from tqdm.auto import tqdm

from sciml.data.generators.optional import require
from sciml.io.files import write_extxyz

#: Common names accepted besides the names known to :func:`ase.build.molecule`.
MOLECULE_ALIASES: dict[str, str] = {
    "ethanol": "CH3CH2OH",
    "water": "H2O",
    "methane": "CH4",
    "benzene": "C6H6",
    "ammonia": "NH3",
    "methanol": "CH3OH",
}


def resolve_molecule(name: str) -> Atoms:
    """Build a molecule (gas phase, no cell) from a common name or an ``ase.build.molecule`` name.

    Raises:
        ValueError: if the name is neither an alias in :data:`MOLECULE_ALIASES` nor known to ASE.
    """
    formula = MOLECULE_ALIASES.get(name.lower(), name)
    try:
        return build_molecule(formula)
    except KeyError:
        aliases = ", ".join(f"{k!r}->{v!r}" for k, v in MOLECULE_ALIASES.items())
        raise ValueError(
            f"unknown molecule {name!r}: use an ase.build.molecule name (e.g. 'CH3CH2OH') "
            f"or one of the aliases {aliases}"
        ) from None


def generate_xtb_md(
    molecule: str | Atoms,
    n_frames: int,
    temperature_K: float = 500.0,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.01,
    stride: int = 1,
    equilibration_steps: int = 100,
    seed: int = 0,
    method: str = "GFN2-xTB",
    output: str | Path | None = None,
) -> list[Atoms]:
    """Sample frames of a Langevin MD trajectory driven by a tblite GFN-xTB calculator.

    Velocities start from a Maxwell-Boltzmann distribution at ``temperature_K``; the centre of mass
    is held fixed (``FixCom``). The first ``equilibration_steps`` steps are discarded, then a frame
    is recorded every ``stride`` steps: ``equilibration_steps + n_frames * stride`` steps in all.
    The dynamics reuses each step's SCF solution as the next guess; the recorded energy and forces
    come from a fresh single point instead, so they depend on the positions only.

    Args:
        molecule: an ``ase.build.molecule`` name, an alias from :data:`MOLECULE_ALIASES` (e.g.
            ``"ethanol"``) or an :class:`ase.Atoms` (copied, not modified).
        n_frames: number of frames to record.
        temperature_K: thermostat and initial-velocity temperature (K).
        timestep_fs: MD time step (fs).
        friction_per_fs: Langevin friction coefficient (1/fs).
        stride: MD steps between recorded frames.
        equilibration_steps: MD steps run and discarded before the first frame.
        seed: seed of the random generator for the initial velocities and the thermostat noise.
        method: tblite method, ``"GFN2-xTB"`` or ``"GFN1-xTB"``.
        output: if given, the frames are also written there as extended XYZ. The file appears
            only once complete (written to a temporary file and moved into place).

    Returns:
        ``n_frames`` :class:`ase.Atoms` of ``N`` atoms, each with a single-point calculator holding
        ``energy`` (float, eV) and ``forces`` (array ``(N, 3)``, eV/Å) at its positions (Å), and
        ``info["time_fs"]``, the simulation time since the end of equilibration (fs).

    Raises:
        ValueError: for an unknown molecule name or a non-positive ``n_frames``/``stride``.
        ValueError: tblite is not installed.
    """
    if n_frames < 1 or stride < 1 or equilibration_steps < 0:
        raise ValueError("n_frames and stride must be >= 1 and equilibration_steps >= 0")
    require("tblite", "GFN2-xTB data generation", "pip install tblite (or pip install 'sciml[data]')")
    from tblite.ase import TBLite

    atoms = resolve_molecule(molecule) if isinstance(molecule, str) else molecule.copy()
    atoms.calc = TBLite(method=method, verbosity=0)
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(atoms.get_masses() * units.kB * temperature_K)[:, None]  # Maxwell-Boltzmann
    atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * sigma)
    Stationary(atoms)
    atoms.set_constraint([*atoms.constraints, FixCom()])
    dyn = Langevin(
        atoms,
        timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )

    frames: list[Atoms] = []
    with tqdm(total=equilibration_steps + n_frames * stride, unit="step", disable=None) as bar:
        dyn.run(equilibration_steps)
        bar.update(equilibration_steps)
        for k in range(1, n_frames + 1):
            dyn.run(stride)
            bar.update(stride)
            frame = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            frame.calc = TBLite(method=method, verbosity=0)  # fresh SCF: no history dependence
            energy, forces = frame.get_potential_energy(), frame.get_forces()
            frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
            frame.info["time_fs"] = k * stride * timestep_fs
            frames.append(frame)

    if output is not None:
        write_extxyz(output, frames)
    return frames

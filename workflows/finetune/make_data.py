"""The fine-tuning workflow's data: random Cu-Ag fcc alloys labelled by two potentials.

Every structure is an fcc cell of 8 atoms (the cubic cell doubled along x) with a random Cu/Ag
composition, the Vegard lattice constant of that composition (Cu 3.61 Å, Ag 4.09 Å) strained by
up to +-3 % per axis and atoms rattled by 0.12 Å (Gaussian). Two labellings:

- ``emt.extxyz``: ase's EMT (effective medium theory), the pre-training level of theory;
- ``eam.extxyz``: the Cu-Ag EAM of Williams, Mishin and Hamilton (MSMSE 14, 817 (2006), NIST
  file ``CuAg.eam.alloy``, shipped with pyxtal), through ase's EAM calculator: the "other level of
  theory" of the same systems. Its energies are cohesive (about -3 to -3.5 eV/atom), EMT's are
  near 0, so the per-element references differ: what ``data.element_energies: refit`` absorbs.

Labels: energy (eV), forces (eV/Å), stress (eV/Å^3). The EMT and EAM sets are drawn with
different seeds (no structure is in both). Usage: ``python make_data.py OUT_DIR N_EMT N_EAM``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.calculator import Calculator
from ase.calculators.eam import EAM
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import pyxtal

EAM_FILE = Path(pyxtal.__file__).parent / "potentials" / "CuAg.eam.alloy"
LATTICE = {"Cu": 3.61, "Ag": 4.09}  # Å, fcc


def random_alloys(count: int, seed: int) -> List[ase.Atoms]:
    """``count`` rattled, strained 8-atom Cu-Ag fcc cells (see the module docstring)."""
    rng = np.random.default_rng(seed)
    structures = []
    for _ in range(count):
        silver = rng.random()  # fraction of Ag sites, drawn per structure
        symbols = np.where(rng.random(8) < silver, "Ag", "Cu")
        a = LATTICE["Cu"] + (LATTICE["Ag"] - LATTICE["Cu"]) * float(np.mean(symbols == "Ag"))
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 1, 1))
        atoms.set_chemical_symbols(list(symbols))
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.03, 0.03, 3))[:, None], scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.12, atoms.positions.shape)
        structures.append(atoms)
    return structures


def labelled(structures: List[ase.Atoms], calculator: Calculator) -> List[ase.Atoms]:
    """Copies of ``structures`` with the calculator's energy, forces and stress attached."""
    out = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        out.append(atoms)
    return out


def main(folder: str, emt_count: int, eam_count: int) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    ase.io.write(out / "emt.extxyz", labelled(random_alloys(emt_count, seed=1), EMT()))
    ase.io.write(out / "eam.extxyz", labelled(random_alloys(eam_count, seed=2), EAM(potential=str(EAM_FILE))))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

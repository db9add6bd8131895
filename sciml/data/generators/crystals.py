"""Random relaxed crystals labelled with EMT, with chiral crystals and their mirror images.

Each crystal is drawn by pyxtal (``pyxtal().from_random``) in a random space group with a random
composition of up to ``max_species`` of the given EMT elements and at most ``max_atoms`` atoms in
the conventional cell, then relaxed, positions and cell together, with ase's EMT through
``FIRE(FrechetCellFilter(atoms))`` to ``fmax``. A ``chiral_fraction`` share is drawn from the 65
Sohncke space groups (only proper rotations; ``pyxtal.symmetry.Group(sg).chiral``), the rest from
the other 165; a chiral draw that relaxes into a structure with an improper symmetry operation
(within spglib's ``symprec``) is discarded, so that ``chiral_fraction`` is the expected share of
chiral crystals. Draws that pyxtal cannot realise (a composition incompatible with the group's
Wyckoff positions, no placement found) are skipped.

Labels of a relaxed crystal (the ``SinglePointCalculator`` and ``info``):

- ``energy`` total EMT energy, eV; ``forces`` eV/Å; ``stress`` eV/Å³ (Voigt xx yy zz yz xz xy);
- ``info["formation_energy_peratom"]``: (E - Σ_atoms μ_element) / N, eV/atom, μ being the EMT
  energy per atom of the element's fcc crystal relaxed the same way (cell included) to 1e-3 eV/Å;
- ``info["id"]`` (``"gen-000001"``, numbered in output order), ``info["spacegroup"]`` (spglib's
  number after relaxation at tolerance ``symprec``, 0.1 Å by default), ``info["chiral"]`` (that
  group has no improper operation), ``info["converged"]`` (FIRE reached ``fmax`` within
  ``max_steps``), ``info["relax_steps"]``.

With ``enantiomorph_pairs``, every chiral crystal is followed by its mirror image: positions and
cell reflected through the yz plane (x -> -x), the cell vectors then negated so that the cell is
right-handed again (the same lattice). EMT is invariant under reflection, so the mirror carries
the same energy and formation energy, and the reflected forces and stress;
``info["enantiomorph_of"]`` is the original's id. A structure whose space group has only proper operations is not
superimposable on its mirror image (a proper motion taking one onto the other would make
reflection-times-motion an improper symmetry); in the 11 enantiomorphic pairs of groups (P4_1 /
P4_3, P3_121 / P3_221, P6_1 / P6_5, ...) spglib gives the mirror the partner group's number.

The relaxed cells are those pyxtal draws (conventional, not reduced). Crystals that fall apart in
the relaxation (more than twice the largest fcc volume per atom of the elements, or an atom with
no neighbour within 1.5 x the largest fcc nearest-neighbour distance: layers, chains or clusters
in vacuum beyond EMT's cutoff) or collapse (atoms closer than 1.5 Å) are dropped and another is
drawn.

Throughput on this machine (one core, OMP_NUM_THREADS=1, default elements, ``max_atoms=8``,
FIRE ``maxstep=0.1`` Å, 40 crystals): 2.0 relaxed crystals per second with ``chiral_fraction=0``,
1.35 per second (1.8 structures per second with the mirror images) with the default 0.3, chiral
draws that relax into achiral structures being redrawn. The time is in EMT steps (about 6 ms for
8 atoms, typically 30-80 steps per crystal); pyxtal's placement takes a few ms.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import ase
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.filters import FrechetCellFilter
from ase.neighborlist import neighbor_list
from ase.optimize import FIRE

from sciml.data.generators.optional import require

#: The fcc metals EMT is fitted to (its H, C, N and O have no sensible fcc reference).
DEFAULT_ELEMENTS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
#: Space-group numbers of the 11 enantiomorphic pairs, each mapped to its partner.
ENANTIOMORPHIC_PARTNER: Dict[int, int] = {
    a: b for pair in ((76, 78), (91, 95), (92, 96), (144, 145), (151, 153), (152, 154), (169, 170),
                      (171, 172), (178, 179), (180, 181), (212, 213)) for a, b in (pair, pair[::-1])
}
_MIN_DISTANCE = 1.5  # Å: closer pairs mean a collapsed structure (EMT's metals sit at 2.5-2.9 Å)
_MAX_ATTEMPTS_PER_CRYSTAL = 50


def generate_crystals(
    num: int,
    seed: int = 0,
    elements: Sequence[str] = DEFAULT_ELEMENTS,
    max_atoms: int = 8,
    chiral_fraction: float = 0.3,
    enantiomorph_pairs: bool = True,
    fmax: float = 0.05,
    max_steps: int = 300,
    max_species: int = 3,
    maxstep: float = 0.1,
    symprec: float = 0.1,
) -> List[ase.Atoms]:
    """``num`` random crystals relaxed and labelled with EMT (see the module docstring).

    Args:
        num: relaxed crystals to draw; with ``enantiomorph_pairs`` the list also holds one mirror
            image right after each chiral crystal, so it has ``num`` + (number of chiral ones)
            entries.
        seed: the draws (space group, composition, pyxtal's placement) are reproducible for a seed.
        elements: a subset of :data:`DEFAULT_ELEMENTS`.
        max_atoms: most atoms in the conventional cell.
        chiral_fraction: probability that a crystal is chiral: drawn in a Sohncke space group and
            still without improper symmetry after relaxation (at ``symprec``), draws that relaxed
            into an achiral structure being discarded.
        fmax: eV/Å, on forces and on the cell's virial / N (``FrechetCellFilter``'s convergence).
        max_steps: FIRE steps at most; crystals that do not converge are kept with
            ``info["converged"] = False``.
        max_species: most distinct elements in one crystal.
        maxstep: Å, FIRE's largest move per step.
        symprec: Å, spglib's tolerance for the space group and chirality of the relaxed crystal;
            the loose default keeps nearly achiral structures out of the chiral ones.

    Raises:
        ValueError: unknown element, bad sizes, pyxtal not installed.
        RuntimeError: no valid crystal after 50 draws per requested crystal.
    """
    require("pyxtal", "random crystal generation (sciml data generate crystals)", "pip install --no-deps pyxtal==1.1.5")
    unknown = [e for e in elements if e not in DEFAULT_ELEMENTS]
    if unknown or not elements:
        raise ValueError(f"no EMT fcc metal {unknown or '(empty element list)'}; "
                         f"choose from {', '.join(DEFAULT_ELEMENTS)}")
    if num < 1 or max_atoms < 1 or max_species < 1 or not 0.0 <= chiral_fraction <= 1.0:
        raise ValueError(f"need num, max_atoms, max_species >= 1 and 0 <= chiral_fraction <= 1; got "
                         f"{num}, {max_atoms}, {max_species}, {chiral_fraction}")
    elements = tuple(elements)
    references = {e: _fcc_reference(e, fmax, max_steps) for e in elements}
    max_volume = 2.0 * max(volume for _, volume in references.values())
    chiral_groups, other_groups = _space_groups(max_atoms)
    rng = np.random.default_rng(seed)
    out: List[ase.Atoms] = []
    attempts = 0
    for _ in range(num):
        want_chiral = bool(rng.random() < chiral_fraction)
        groups = chiral_groups if want_chiral else other_groups
        while True:
            attempts += 1
            if attempts > _MAX_ATTEMPTS_PER_CRYSTAL * num:
                raise RuntimeError(f"only {len(out)} structures after {attempts - 1} draws for {num} crystals; "
                                   f"try a larger max_atoms, other elements or a smaller chiral_fraction")
            group = int(rng.choice(list(groups)))
            draw = _draw_composition(rng, elements, groups[group], max_atoms, max_species)
            atoms = None if draw is None else _random_crystal(group, *draw, int(rng.integers(2**31)))
            if atoms is None or (want_chiral and not is_chiral(atoms, symprec)):
                continue
            converged, steps = _relax(atoms, fmax, max_steps, maxstep)
            # relaxing keeps the drawn symmetry and may add some, improper operations included
            if _is_intact(atoms, max_volume) and is_chiral(atoms, symprec) == want_chiral:
                break
        crystal = _labelled(atoms, references, symprec)
        crystal.info.update(id=f"gen-{len(out) + 1:06d}", converged=converged, relax_steps=steps)
        out.append(crystal)
        if enantiomorph_pairs and want_chiral:
            twin = mirror_image(crystal)
            twin.info.update(id=f"gen-{len(out) + 1:06d}", enantiomorph_of=crystal.info["id"],
                             spacegroup=spacegroup_number(twin, symprec))
            out.append(twin)
    return out


def mirror_image(atoms: ase.Atoms) -> ase.Atoms:
    """``atoms`` reflected through the yz plane (x -> -x) in a right-handed cell.

    Cartesian positions, forces and the stress of an attached calculator are reflected; the cell
    vectors are reflected and then negated (same lattice, positive determinant). ``info`` is
    copied; energies are unchanged.
    """
    reflect = np.diag([-1.0, 1.0, 1.0])
    twin = atoms.copy()
    twin.set_cell(-atoms.cell.array @ reflect, scale_atoms=False)
    twin.positions = atoms.positions @ reflect
    twin.wrap()
    if atoms.calc is not None:
        results = dict(atoms.calc.results)
        if "forces" in results:
            results["forces"] = results["forces"] @ reflect
        if "stress" in results:
            xx, yy, zz, yz, xz, xy = results["stress"]
            results["stress"] = np.array([xx, yy, zz, yz, -xz, -xy])
        twin.calc = SinglePointCalculator(twin, **results)
    return twin


def spacegroup_number(atoms: ase.Atoms, symprec: float = 0.1) -> int:
    """spglib's international space-group number of ``atoms`` (0 if spglib finds none)."""
    dataset = _symmetry_dataset(atoms, symprec)
    return 0 if dataset is None else int(dataset.number)


def is_chiral(atoms: ase.Atoms, symprec: float = 0.1) -> bool:
    """Whether every symmetry operation spglib finds in ``atoms`` is a proper rotation, i.e. the
    crystal is not superimposable on its mirror image."""
    dataset = _symmetry_dataset(atoms, symprec)
    return dataset is not None and bool(np.all(np.linalg.det(dataset.rotations) > 0))


def write_crystal_dataset(
    atoms_list: Sequence[ase.Atoms], output_dir: Union[str, os.PathLike], target: str = "formation_energy_peratom"
) -> Dict[str, Path]:
    """Write labelled crystals (as :func:`generate_crystals` returns them) under ``output_dir``.

    ``dft_3d.json`` (JARVIS-DFT ``dft_3d`` layout: ``jid``, ``atoms``, ``formation_energy_peratom``,
    the total energy per atom as ``optb88vdw_total_energy``, ``spg_number``),
    ``matbench_<target>.json.gz`` (MatBench layout, one target column), ``structures.extxyz``
    (total energy, forces, stress and the info keys, for energy-trained models) and
    ``cifs/<id>.cif``. Returns the paths by name.

    Raises:
        ValueError: two crystals share an ``info["id"]``.
    """
    from ase.io import write

    from sciml.data.crystals.jarvis import write_jarvis
    from sciml.data.crystals.matbench import write_matbench
    from sciml.data.crystals.records import CrystalRecord

    ids = [atoms.info["id"] for atoms in atoms_list]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"crystal ids must be unique (they name the CIF files); repeated: {', '.join(repeated)}")
    directory = Path(output_dir)
    (directory / "cifs").mkdir(parents=True, exist_ok=True)
    records = []
    for atoms in atoms_list:
        energy = atoms.get_potential_energy()
        targets = {"formation_energy_peratom": float(atoms.info["formation_energy_peratom"]),
                   "optb88vdw_total_energy": float(energy / len(atoms)),
                   "spg_number": float(atoms.info["spacegroup"])}
        if target not in targets:
            targets[target] = float(atoms.info[target])
        structure = atoms.copy()
        structure.calc = None
        structure.info = {}
        records.append(CrystalRecord(atoms.info["id"], structure, targets))
    paths = {"jarvis": directory / "dft_3d.json", "matbench": directory / f"matbench_{target}.json.gz",
             "extxyz": directory / "structures.extxyz", "cifs": directory / "cifs"}
    write_jarvis(records, paths["jarvis"])
    write_matbench(records, paths["matbench"], target)
    write(paths["extxyz"], list(atoms_list), format="extxyz")
    for record in records:
        write(paths["cifs"] / f"{record.id}.cif", record.atoms, format="cif")
    return paths


def perturbed_crystals(
    crystals: Sequence[ase.Atoms], copies: int = 4, rattle: float = 0.05, strain: float = 0.03, seed: int = 0
) -> List[ase.Atoms]:
    """Training data for energy models: ``copies`` perturbed copies of each (relaxed) crystal,
    labelled with EMT's total energy (eV), forces (eV/Å) and stress (eV/Å³).

    Each copy gets Gaussian displacements of ``rattle`` Å per component and a random symmetric
    strain with components uniform in [-``strain``, ``strain``] applied to cell and atoms, so the
    labels carry the restoring forces and stresses that relaxed crystals (zero forces and stress)
    lack. ``info["id"]`` is ``"<crystal id>-p<k>"``.
    """
    rng = np.random.default_rng(seed)
    out = []
    for crystal in crystals:
        for k in range(copies):
            atoms = ase.Atoms(crystal.numbers, crystal.positions, cell=crystal.cell.array, pbc=True)
            epsilon = rng.uniform(-strain, strain, (3, 3))
            deformation = np.eye(3) + (epsilon + epsilon.T) / 2
            atoms.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
            atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
            atoms.calc = EMT()
            labelled = atoms.copy()
            labelled.calc = SinglePointCalculator(labelled, energy=atoms.get_potential_energy(),
                                                  forces=atoms.get_forces(), stress=atoms.get_stress(voigt=True))
            labelled.info = {"id": f"{crystal.info.get('id', 'crystal')}-p{k}"}
            out.append(labelled)
    return out


def _labelled(atoms: ase.Atoms, references: Dict[str, Tuple[float, float]], symprec: float) -> ase.Atoms:
    energy = atoms.get_potential_energy()
    crystal = atoms.copy()
    crystal.calc = SinglePointCalculator(crystal, energy=energy, forces=atoms.get_forces(),
                                         stress=atoms.get_stress(voigt=True))
    reference = sum(references[s][0] for s in atoms.get_chemical_symbols())
    crystal.info = {"formation_energy_peratom": float((energy - reference) / len(atoms)),
                    "spacegroup": spacegroup_number(atoms, symprec), "chiral": is_chiral(atoms, symprec)}
    return crystal


def _relax(atoms: ase.Atoms, fmax: float, steps: int, maxstep: float) -> Tuple[bool, int]:
    atoms.calc = EMT()
    dynamics = FIRE(FrechetCellFilter(atoms), maxstep=maxstep, logfile=None)
    converged = dynamics.run(fmax=fmax, steps=steps)
    return bool(converged), int(dynamics.nsteps)


@lru_cache(maxsize=None)
def _fcc_reference(element: str, fmax: float, steps: int) -> Tuple[float, float]:
    """(EMT energy per atom eV, volume per atom Å³) of the relaxed fcc ``element``."""
    atoms = bulk(element, "fcc")  # ase's experimental lattice constant as the start
    _relax(atoms, min(fmax, 1e-3), max(steps, 500), 0.1)
    return float(atoms.get_potential_energy() / len(atoms)), float(atoms.get_volume() / len(atoms))


@lru_cache(maxsize=None)
def _space_groups(max_atoms: int) -> Tuple[Dict[int, Tuple[int, ...]], Dict[int, Tuple[int, ...]]]:
    """(Sohncke, other) space groups with a Wyckoff position of at most ``max_atoms`` sites, each
    with its Wyckoff multiplicities (conventional cell) that fit."""
    from pyxtal.symmetry import Group

    chiral, other = {}, {}
    for number in range(1, 231):
        group = Group(number)
        multiplicities = tuple(sorted({w.multiplicity for w in group.Wyckoff_positions if w.multiplicity <= max_atoms}))
        if multiplicities:
            (chiral if group.chiral else other)[number] = multiplicities
    return chiral, other


def _draw_composition(
    rng: np.random.Generator, elements: Tuple[str, ...], multiplicities: Tuple[int, ...], max_atoms: int,
    max_species: int,
) -> Optional[Tuple[List[str], List[int]]]:
    """Species and counts whose total fits ``max_atoms``; each count a sum of one or two Wyckoff
    multiplicities (pyxtal checks that the group can hold it). None if the draw overflows."""
    k = int(rng.integers(1, min(max_species, len(elements)) + 1))
    species = [str(s) for s in rng.choice(elements, size=k, replace=False)]
    counts = [int(rng.choice(multiplicities)) * int(rng.integers(1, 3)) for _ in species]
    return (species, counts) if sum(counts) <= max_atoms else None


def _random_crystal(group: int, species: List[str], counts: List[int], seed: int) -> Optional[ase.Atoms]:
    from pyxtal import pyxtal
    from pyxtal.msg import Error as PyxtalError
    from pyxtal.symmetry import Group

    if not Group(group).check_compatible(counts)[0]:
        return None
    crystal = pyxtal()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crystal.from_random(3, group, species, counts, random_state=seed)
    except (PyxtalError, RuntimeError, ValueError):
        return None
    if not crystal.valid:
        return None
    atoms = crystal.to_ase()
    atoms.pbc = True
    return atoms


def _is_intact(atoms: ase.Atoms, max_volume: float) -> bool:
    """At most ``max_volume`` Å³ per atom, no two atoms closer than 1.5 Å and every atom with a
    neighbour within 1.5 x the nearest-neighbour distance of an fcc crystal of half that volume."""
    if atoms.get_volume() / len(atoms) > max_volume:
        return False
    fcc_neighbour = (np.sqrt(2.0) * max_volume / 2.0) ** (1.0 / 3.0)  # fcc: V/atom = d³ / √2
    first, distances = neighbor_list("id", atoms, 1.5 * fcc_neighbour)
    if len(distances) and distances.min() < _MIN_DISTANCE:
        return False
    return len(np.unique(first)) == len(atoms)


def _symmetry_dataset(atoms: ase.Atoms, symprec: float):
    import spglib

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return spglib.get_symmetry_dataset(cell, symprec=symprec)

"""OC20-like data from EMT: adsorbates relaxed on fcc(111)/(100) metal slabs, every step kept.

Each system is a small slab of Cu, Ag, Au, Ni, Pd or Pt (``ase.build.fcc111``/``fcc100``,
periodic in all directions with vacuum along z, as OC20's adslabs) with one adsorbate placed at
a random site by ``ase.build.add_adsorbate``. Atoms are tagged the OC20 way, not ase's (ase tags
slab layers 1 = top .. n = bottom and adsorbates 0): 2 adsorbate, 1 the top ``surface_layers``
layers, 0 the layers below, which are fixed (``FixAtoms``) like OC20's subsurface. The free atoms
are rattled, then relaxed with BFGS or FIRE; every evaluated geometry becomes a frame with its
total energy (eV) and forces (eV/Å, fixed atoms included).

Reference energy of a system = EMT energy of the relaxed clean slab + the OC20-style gas
references of the adsorbate's atoms (H: H2/2, O: H2O - H2, N: N2/2, C: CO - O), so that
``energy - reference`` is an adsorption energy as in OC20's S2EF/IS2RE targets. EMT (Jacobsen
et al.) is a toy potential; the data mimic OC20's layout and physics loosely, not its values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple, Union

import ase
import numpy as np
from ase.build import add_adsorbate, fcc100, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.optimize import BFGS, FIRE

from sciml.data.oc20.ase_db import write_ase_db
from sciml.data.oc20.legacy_lmdb import write_legacy_lmdb
from sciml.data.oc20.records import Record, atoms_record
from sciml.data.oc20.s2ef_extxyz import frame_record, write_s2ef_extxyz

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt")
FACETS = ("111", "100")
#: adsorbate name -> (symbols, positions in Å with the binding atom at the origin, others above)
ADSORBATES: Dict[str, Tuple[str, Tuple[Tuple[float, float, float], ...]]] = {
    "H": ("H", ((0, 0, 0),)),
    "O": ("O", ((0, 0, 0),)),
    "N": ("N", ((0, 0, 0),)),
    "C": ("C", ((0, 0, 0),)),
    "OH": ("OH", ((0, 0, 0), (0, 0, 0.97))),
    "CO": ("CO", ((0, 0, 0), (0, 0, 1.15))),
    "NH": ("NH", ((0, 0, 0), (0, 0, 1.04))),
    "CH": ("CH", ((0, 0, 0), (0, 0, 1.10))),
    "NO": ("NO", ((0, 0, 0), (0, 0, 1.17))),
}
_SITES = {"111": ("ontop", "bridge", "fcc", "hcp"), "100": ("ontop", "bridge", "hollow")}
_OPTIMIZERS = {"BFGS": BFGS, "FIRE": FIRE}


@dataclass
class AdsorptionRelaxation:
    """One relaxed adsorbate+slab system.

    Attributes:
        sid: system id (``random<sid>`` in S2EF companion files).
        description: e.g. ``"Pt(111) + CO @ fcc"``.
        reference_energy: eV, relaxed clean slab + gas references of the adsorbate atoms.
        frames: every evaluated geometry, first = initial, last = relaxed; each with OC20 tags,
            the ``FixAtoms`` constraint and a ``SinglePointCalculator`` holding the total energy
            (eV) and the forces on all atoms (eV/Å).
    """

    sid: int
    description: str
    reference_energy: float
    frames: List[ase.Atoms]


def relax_adsorbates(
    n_systems: int,
    seed: int = 0,
    metals: Sequence[str] = METALS,
    facets: Sequence[str] = FACETS,
    adsorbates: Sequence[str] = tuple(ADSORBATES),
    size: Tuple[int, int, int] = (2, 2, 3),
    surface_layers: int = 1,
    vacuum: float = 6.0,
    height: float = 1.8,
    rattle: float = 0.05,
    fmax: float = 0.05,
    max_steps: int = 30,
    optimizer: str = "BFGS",
) -> List[AdsorptionRelaxation]:
    """Relax ``n_systems`` random adsorbate+slab systems; reproducible for a given ``seed``.

    Each system draws a metal, facet, adsorbate and site; its free atoms are displaced by
    N(0, ``rattle``²) Å per component before relaxing to ``fmax`` eV/Å or ``max_steps`` steps
    (so at most ``max_steps + 1`` frames). ``size`` is (a, b, layers) of the slab, ``vacuum`` Å on
    each side along z, ``height`` Å of the adsorbate above the surface.

    Raises:
        ValueError: unknown metal, facet, adsorbate or optimizer; bad sizes.
    """
    _check_choices("metal", metals, METALS)
    _check_choices("facet", facets, FACETS)
    _check_choices("adsorbate", adsorbates, tuple(ADSORBATES))
    _check_choices("optimizer", [optimizer], tuple(_OPTIMIZERS))
    if n_systems < 1 or max_steps < 0 or not 1 <= surface_layers < size[2]:
        raise ValueError(f"need n_systems >= 1, max_steps >= 0 and 1 <= surface_layers < layers ({size[2]}); "
                         f"got {n_systems}, {max_steps}, {surface_layers}")
    rng = np.random.default_rng(seed)
    slab_energies: Dict[Tuple[str, str], float] = {}
    out = []
    for sid in range(n_systems):
        metal, facet = str(rng.choice(list(metals))), str(rng.choice(list(facets)))
        name, site = str(rng.choice(list(adsorbates))), str(rng.choice(_SITES[facet]))
        slab = _slab(metal, facet, size, surface_layers, vacuum)
        if (metal, facet) not in slab_energies:
            clean = slab.copy()
            slab_energies[metal, facet] = _relax(clean, fmax, max(max_steps, 100), optimizer)[-1].calc.results["energy"]
        symbols, positions = ADSORBATES[name]
        adslab = slab.copy()
        add_adsorbate(adslab, ase.Atoms(symbols, positions), height, site)
        adslab.info.pop("adsorbate_info", None)
        tags = np.where(adslab.get_tags() == 0, 2, np.where(adslab.get_tags() <= surface_layers, 1, 0))
        adslab.set_tags(tags)
        adslab.set_constraint(FixAtoms(mask=tags == 0))
        free = tags != 0
        adslab.positions[free] += rng.normal(0.0, rattle, size=(int(free.sum()), 3))
        reference = slab_energies[metal, facet] + sum(_gas_references()[s] for s in adslab[tags == 2].get_chemical_symbols())
        out.append(AdsorptionRelaxation(sid, f"{metal}({facet}) + {name} @ {site}", float(reference),
                                        _relax(adslab, fmax, max_steps, optimizer)))
    return out


def s2ef_records(relaxations: Sequence[AdsorptionRelaxation], subtract_reference: bool = True) -> Iterator[Record]:
    """One S2EF record per frame (``fid`` = step), as :func:`read_s2ef_extxyz` reads them back."""
    for relaxation in relaxations:
        for fid, atoms in enumerate(relaxation.frames):
            yield frame_record(atoms, relaxation.sid, fid, relaxation.reference_energy, subtract_reference)


def is2re_records(relaxations: Sequence[AdsorptionRelaxation], subtract_reference: bool = True) -> Iterator[Record]:
    """One IS2RE/IS2RS record per system, with the fields of OC20's IS2RE LMDBs: the initial
    structure, ``sid``, ``initial_energy``, ``relaxed_energy`` (adsorption energies when
    ``subtract_reference``) and ``relaxed_positions``; no forces."""
    for relaxation in relaxations:
        first, last = relaxation.frames[0], relaxation.frames[-1]
        shift = relaxation.reference_energy if subtract_reference else 0.0
        record = atoms_record(first)
        record.update(sid=np.array(relaxation.sid, dtype=np.int64),
                      initial_energy=np.array(first.calc.results["energy"] - shift),
                      relaxed_energy=np.array(last.calc.results["energy"] - shift),
                      relaxed_positions=last.positions.copy())
        yield record


def write_oc20_dataset(
    relaxations: Sequence[AdsorptionRelaxation], directory: Union[str, os.PathLike], frames_per_file: int = 200
) -> Dict[str, Path]:
    """Write the relaxations in the public OC20 layouts under ``directory``.

    ``s2ef/<k>.extxyz.xz`` + ``s2ef/<k>.txt`` (``frames_per_file`` frames each), ``s2ef.lmdb``
    (fairchem legacy LMDB, referenced energies, PyG 2.x pickles), ``is2re.lmdb`` (legacy IS2RE
    LMDB: ``y_init``, ``y_relaxed``, ``pos_relaxed``) and ``adslabs.db`` (ASE database of every
    frame with ``sid``, ``fid`` and ``reference_energy`` keys). Returns the paths by name.
    """
    directory = Path(directory)
    (directory / "s2ef").mkdir(parents=True, exist_ok=True)
    frames = [(atoms, (r.sid, fid, r.reference_energy)) for r in relaxations for fid, atoms in enumerate(r.frames)]
    for k, start in enumerate(range(0, len(frames), frames_per_file)):
        chunk = frames[start:start + frames_per_file]
        write_s2ef_extxyz(directory / "s2ef" / str(k), [f for f, _ in chunk], [i for _, i in chunk])
    paths = {"s2ef": directory / "s2ef", "s2ef_lmdb": directory / "s2ef.lmdb",
             "is2re_lmdb": directory / "is2re.lmdb", "ase_db": directory / "adslabs.db"}
    write_legacy_lmdb(paths["s2ef_lmdb"], s2ef_records(relaxations))
    write_legacy_lmdb(paths["is2re_lmdb"], is2re_records(relaxations))
    write_ase_db(paths["ase_db"], [f for f, _ in frames],
                 [{"sid": sid, "fid": fid, "reference_energy": ref} for _, (sid, fid, ref) in frames])
    return paths


def _slab(metal: str, facet: str, size: Tuple[int, int, int], surface_layers: int, vacuum: float) -> ase.Atoms:
    slab = (fcc111 if facet == "111" else fcc100)(metal, size=size, vacuum=vacuum)
    slab.pbc = True
    tags = np.where(slab.get_tags() <= surface_layers, 1, 0)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    return slab


def _relax(atoms: ase.Atoms, fmax: float, steps: int, optimizer: str) -> List[ase.Atoms]:
    """Relax ``atoms`` in place with EMT; every evaluated geometry as a labelled copy."""
    atoms.calc = EMT()
    frames: List[ase.Atoms] = []

    def record() -> None:
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces(apply_constraint=False))
        frames.append(frame)

    dynamics = _OPTIMIZERS[optimizer](atoms, logfile=None)
    dynamics.attach(record, interval=1)
    dynamics.run(fmax=fmax, steps=steps)
    return frames


@lru_cache(maxsize=None)
def _gas_references() -> Dict[str, float]:
    """OC20-style per-element gas-phase references (eV) from EMT energies of H2, H2O, N2, CO."""
    energy = {}
    for name in ("H2", "H2O", "N2", "CO"):
        gas = molecule(name)
        gas.calc = EMT()
        energy[name] = gas.get_potential_energy()
    oxygen = energy["H2O"] - energy["H2"]
    return {"H": energy["H2"] / 2, "O": oxygen, "N": energy["N2"] / 2, "C": energy["CO"] - oxygen}


def _check_choices(what: str, given: Sequence[str], valid: Sequence[str]) -> None:
    unknown = [g for g in given if g not in valid]
    if unknown or not given:
        raise ValueError(f"unknown {what} {unknown[0] if unknown else '(none given)'!r}; choose from {', '.join(valid)}")

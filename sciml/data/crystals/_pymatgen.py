"""pymatgen ``Structure`` dictionaries (``Structure.as_dict()``, monty-encoded) to and from ase."""

from __future__ import annotations

from typing import Any, Dict

import ase
import numpy as np

from sciml.data.crystals.validation import CrystalInputError


def structure_dict_to_ase(structure: Any, source: str) -> ase.Atoms:
    """An ``ase.Atoms`` (pbc True) from a pymatgen ``Structure`` or its ``as_dict()``.

    Raises:
        CrystalInputError: not a structure dictionary (a molecule, a composition, garbage), an
            unknown element, a disordered site (partial occupancy or mixed species), or a missing
            lattice; the message starts with ``source``.
    """
    from pymatgen.core import Element, Species, Structure

    if isinstance(structure, dict):
        kind = structure.get("@class", "Structure")
        if kind not in ("Structure", "IStructure"):
            raise CrystalInputError(f"{source}: expected a pymatgen Structure, got {kind}")
        if "lattice" not in structure:
            raise CrystalInputError(f"{source}: missing lattice")
        if not structure.get("sites"):
            raise CrystalInputError(f"{source}: no atoms")
        try:
            structure = Structure.from_dict(structure)
        except Exception as err:  # pymatgen raises ValueError, KeyError, TypeError, ... on bad input
            raise CrystalInputError(f"{source}: not a valid pymatgen Structure ({type(err).__name__}: {err})") from None
    elif not isinstance(structure, Structure):
        raise CrystalInputError(f"{source}: expected a pymatgen Structure dictionary, got {type(structure).__name__}")
    numbers = []
    for position, site in enumerate(structure):
        if not site.is_ordered:
            raise CrystalInputError(
                f"{source}: partial occupancy (disordered site {position}: {site.species}); only ordered structures are supported"
            )
        specie = site.specie
        if not isinstance(specie, (Element, Species)):
            raise CrystalInputError(f"{source}: unknown element {str(specie)!r} (atom {position})")
        numbers.append(specie.Z)
    return ase.Atoms(numbers=numbers, positions=structure.cart_coords, cell=structure.lattice.matrix, pbc=True)


def ase_to_structure_dict(atoms: ase.Atoms) -> Dict[str, Any]:
    """The pymatgen ``Structure.as_dict()`` of ``atoms`` (with ``@module``/``@class``)."""
    from pymatgen.core import Lattice, Structure

    structure = Structure(
        Lattice(np.array(atoms.cell.array)), atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True
    )
    return structure.as_dict()

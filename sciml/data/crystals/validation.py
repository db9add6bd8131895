"""Structural checks shared by every crystal reader, and the one error they raise.

A crystal that reaches a model must be periodic in all three directions, have a cell of non-zero
volume, at least one atom, known elements (atomic numbers 1..118), finite coordinates, and no two
atoms closer than :data:`MIN_DISTANCE` Å (periodic images included): such a pair is almost always
a disordered site written out twice, a duplicated atom or a unit error, and it would give a
graph edge of (near) zero length.
"""

from __future__ import annotations

import ase
import numpy as np

from sciml.graph.neighbors import neighbor_list
from sciml.graph.validation import MAX_ATOMIC_NUMBER

#: Closest allowed distance between two atoms (periodic images included), Å.
MIN_DISTANCE = 0.5
_MIN_VOLUME = 1e-6  # Å^3: below this the cell is singular


class CrystalInputError(ValueError):
    """A crystal input that cannot be used; the message starts with the file (and record) it came
    from and names the problem in one line."""


def check_crystal(atoms: ase.Atoms, source: str, min_distance: float = MIN_DISTANCE) -> ase.Atoms:
    """Check that ``atoms`` is a usable periodic crystal; return it unchanged.

    Args:
        atoms: the structure (positions Å, cell rows Å).
        source: where it came from, e.g. ``"data.json (record JVASP-1002)"``; every message
            starts with it.
        min_distance: closest allowed interatomic distance, Å, over all periodic images.

    Raises:
        CrystalInputError: no atoms, not periodic in all directions, a singular cell, unknown
            atomic numbers, non-finite coordinates, or two atoms closer than ``min_distance``.
    """
    if len(atoms) == 0:
        raise CrystalInputError(f"{source}: no atoms")
    if not atoms.pbc.all():
        raise CrystalInputError(f"{source}: not periodic in all three directions (pbc={atoms.pbc.tolist()})")
    cell = atoms.cell.array
    if not np.isfinite(cell).all():
        raise CrystalInputError(f"{source}: lattice contains NaN or inf")
    volume = abs(np.linalg.det(cell))
    if volume < _MIN_VOLUME:
        raise CrystalInputError(f"{source}: missing or singular lattice (cell volume {volume:.3g} Å^3)")
    numbers = atoms.numbers
    bad = (numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise CrystalInputError(f"{source}: unknown element (atomic number {int(numbers[k])} at atom {k})")
    positions = atoms.positions
    if not np.isfinite(positions).all():
        k = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
        raise CrystalInputError(f"{source}: non-finite coordinates at atom {k}")
    i, j, shifts = neighbor_list(positions, cell, True, min_distance)
    if len(i):
        i, j, shifts = int(i[0]), int(j[0]), shifts[0].numpy()
        distance = float(np.linalg.norm(positions[j] - positions[i] + shifts @ cell))
        where = "" if not shifts.any() else f" (periodic image {shifts.tolist()})"
        raise CrystalInputError(
            f"{source}: overlapping atoms {i} ({atoms[i].symbol}) and {j} ({atoms[j].symbol}) are "
            f"{distance:.3f} Å apart{where}, closer than {min_distance} Å"
        )
    return atoms

"""Validated CIF reading: one clear :class:`CrystalInputError` per bad file, never a traceback.

:func:`read_cif` parses with ase's CIF parser (symmetry expansion included) and rejects, with a
message naming the file and the problem:

- an unparsable file (binary content, no ``data_`` block, syntax errors);
- no atoms (no ``_atom_site_fract_*`` / ``_atom_site_Cartn_*`` loop);
- a missing lattice (no ``_cell_length_*`` / ``_cell_angle_*`` entries);
- partial occupancies (``_atom_site_occupancy`` < 1: disordered sites, alloys, vacancies);
- unknown elements (a ``_atom_site_type_symbol`` or label that names no element, e.g. ``Xx``);
- overlapping atoms and the other checks of :func:`~sciml.data.crystals.validation.check_crystal`.

:func:`read_crystal_files` reads many files and lists the bad ones instead of stopping.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import ase

from sciml.data.crystals._io import PathLike, logger
from sciml.data.crystals.validation import CrystalInputError, check_crystal
from sciml.data.structure_files import structure_text


def read_cif(path: PathLike) -> ase.Atoms:
    """Read the one structure of a CIF file as a periodic ``ase.Atoms`` and validate it.

    Args:
        path: the ``.cif`` (or ``.mcif``, ``.cif.gz``) file.

    Returns:
        The structure with all symmetry-equivalent sites expanded, positions Å, cell rows Å,
        ``pbc`` True.

    Raises:
        CrystalInputError: see the module docstring; the message starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CrystalInputError(f"{path}: no such file")
    try:
        text = structure_text(path, "a CIF file")
    except ValueError as err:
        raise CrystalInputError(str(err)) from None
    return cif_text_to_atoms(text, str(path))


def cif_text_to_atoms(text: str, source: str) -> ase.Atoms:
    """:func:`read_cif` for CIF text held in memory (e.g. a CIF string inside a JSON dataset);
    ``source`` starts every error message.

    The text is read by :func:`sciml.data.cif_sites.cif_to_structures`, the CIF reader of every
    sciml command, and must hold exactly one structure."""
    from sciml.data.cif_sites import cif_to_structures

    try:
        structures = cif_to_structures(text, source)
    except CrystalInputError:
        raise
    except ValueError as err:
        raise CrystalInputError(str(err)) from None
    if len(structures) != 1:
        raise CrystalInputError(f"{source}: holds {len(structures)} structures (data blocks with atom sites); a "
                                f"crystal dataset entry must hold one")
    return check_crystal(structures[0], source)


def read_crystal_files(
    paths: Sequence[PathLike], skip_bad: bool = True
) -> Tuple[List[Tuple[Path, ase.Atoms]], List[Tuple[Path, str]]]:
    """Read many CIF files for a batch job.

    Args:
        paths: CIF files.
        skip_bad: list a bad file and go on (True), or raise its error (False).

    Returns:
        ``(good, bad)``: ``(path, atoms)`` for every file read, in order, and ``(path, reason)``
        for every file skipped (the reason is the one-line :class:`CrystalInputError` message).

    Raises:
        CrystalInputError: the first bad file, when ``skip_bad`` is False.
    """
    good: List[Tuple[Path, ase.Atoms]] = []
    bad: List[Tuple[Path, str]] = []
    for path in map(Path, paths):
        try:
            good.append((path, read_cif(path)))
        except CrystalInputError as err:
            if not skip_bad:
                raise
            logger.warning("skipping %s", err)
            bad.append((path, str(err)))
    return good, bad

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
from typing import Any, List, Sequence, Tuple

import ase

from sciml.data.crystals._io import PathLike, logger
from sciml.data.crystals.records import CrystalRecord, as_target
from sciml.data.crystals.validation import CrystalInputError, check_crystal
from sciml.data.formats import CRYSTALS, DataFormat, register_format
from sciml.data.structure_files import cif_files, structure_id, structure_kind, structure_text


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


def read_cif_records(path: PathLike, **options: Any) -> List[CrystalRecord]:
    """The records of one CIF file, or of a directory of CIF files plus a target table
    (``targets_path``, read as :func:`~sciml.data.crystals.materials_project.read_materials_project`
    reads it); ``options`` as that function takes them. A single file's targets are its row of
    ``targets_path`` (by ``id_key``, default ``material_id``), if given."""
    from sciml.data.crystals.materials_project import read_materials_project, read_target_table

    if Path(path).is_dir():
        return read_materials_project(path, **options)
    atoms = read_cif(path)
    stem = structure_id(path)
    row = {}
    if options.get("targets_path") is not None:
        row = read_target_table(options["targets_path"], options.get("id_key", "material_id")).get(stem, {})
    return [CrystalRecord(stem, atoms, {name: as_target(value) for name, value in row.items()})]


def is_cif_dataset(path: Path) -> bool:
    """A CIF file (``.cif``, ``.mcif``, any case, ``.gz``) or a directory holding CIF files."""
    return bool(cif_files(path)) if path.is_dir() else structure_kind(path) == "cif"


register_format(DataFormat(name="cif", kind=CRYSTALS, read=read_cif_records, detect=is_cif_dataset,
                           description="one CIF file, or a directory of CIF files plus a target table"))

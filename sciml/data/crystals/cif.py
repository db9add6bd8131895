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

import io
import re
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import ase
from ase.data import atomic_numbers

from sciml.data.crystals._io import PathLike, logger
from sciml.data.crystals.validation import CrystalInputError, check_crystal

#: Occupancies below ``1 - OCCUPANCY_TOLERANCE`` mark a disordered (partially occupied) site.
OCCUPANCY_TOLERANCE = 1e-3
_CELL_TAGS = (
    "_cell_length_a",
    "_cell_length_b",
    "_cell_length_c",
    "_cell_angle_alpha",
    "_cell_angle_beta",
    "_cell_angle_gamma",
)
_COORDINATE_TAGS = ("_atom_site_fract_x", "_atom_site_cartn_x")


def read_cif(path: PathLike) -> ase.Atoms:
    """Read the first structure of a CIF file as a periodic ``ase.Atoms`` and validate it.

    Args:
        path: the ``.cif`` file.

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
        data = path.read_bytes()
    except OSError as err:
        raise CrystalInputError(f"{path}: cannot read ({err})") from None
    if b"\x00" in data:
        raise CrystalInputError(f"{path}: not a CIF file (binary content)")
    return cif_text_to_atoms(data.decode("latin1"), str(path))


def cif_text_to_atoms(text: str, source: str) -> ase.Atoms:
    """:func:`read_cif` for CIF text held in memory (e.g. a CIF string inside a JSON dataset);
    ``source`` starts every error message."""
    if not re.search(r"^\s*data_", text, flags=re.MULTILINE | re.IGNORECASE):
        raise CrystalInputError(f"{source}: unparsable CIF (no data_ block: not a CIF file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ase.io.cif import parse_cif

            blocks = list(parse_cif(io.StringIO(text)))
    except Exception as err:  # ase raises ValueError, KeyError, IndexError, ... on malformed text
        raise CrystalInputError(f"{source}: unparsable CIF ({_describe(err)})") from None
    if not blocks:
        raise CrystalInputError(f"{source}: unparsable CIF (no data_ block)")
    with_sites = [b for b in blocks if any(tag in b for tag in _COORDINATE_TAGS)]
    if not with_sites:
        raise CrystalInputError(f"{source}: no atoms (no _atom_site_fract_* or _atom_site_Cartn_* entries)")
    block = with_sites[0]
    missing = [tag for tag in _CELL_TAGS if tag not in block]
    if missing:
        raise CrystalInputError(f"{source}: missing lattice (no {', '.join(missing)})")
    labels = [str(x) for x in block.get("_atom_site_label", [])]
    raw_symbols = block.get("_atom_site_type_symbol", labels)
    if not raw_symbols:
        raise CrystalInputError(f"{source}: no atoms (no _atom_site_type_symbol or _atom_site_label)")
    for position, raw in enumerate(raw_symbols):
        if _element_of(str(raw)) is None:
            label = f" (site {labels[position]})" if position < len(labels) and labels[position] != raw else ""
            raise CrystalInputError(f"{source}: unknown element {str(raw)!r}{label}")
    partial = []
    for position, occupancy in enumerate(block.get("_atom_site_occupancy", [])):
        if isinstance(occupancy, (int, float)) and occupancy < 1 - OCCUPANCY_TOLERANCE:
            site = labels[position] if position < len(labels) else f"#{position}"
            partial.append(f"{site}={occupancy:g}")
    if partial:
        shown = ", ".join(partial[:5]) + (", ..." if len(partial) > 5 else "")
        raise CrystalInputError(
            f"{source}: partial occupancies (disordered sites: {shown}); only ordered structures are supported"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = block.get_atoms()
    except Exception as err:  # symmetry expansion and number parsing raise assorted errors
        raise CrystalInputError(f"{source}: unparsable CIF structure ({_describe(err)})") from None
    # a plain structure: ase's spacegroup/occupancy bookkeeping in info and arrays is dropped
    atoms = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=True)
    return check_crystal(atoms, source)


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


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _element_of(raw: str) -> Optional[str]:
    """The element of a CIF type symbol or label (``"Fe2+"``, ``"O1"``, ``"Cu"``), or None."""
    match = re.match(r"[A-Za-z]+", raw.strip())
    if match is None:
        return None
    letters = match.group(0)
    for candidate in (letters[:2].capitalize(), letters[:1].upper()):
        if candidate == "D" or atomic_numbers.get(candidate, 0) > 0:
            return candidate
    return None

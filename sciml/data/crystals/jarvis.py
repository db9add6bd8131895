"""JARVIS-DFT datasets (``dft_3d``, ``dft_2d``, ...) as distributed by jarvis-tools / figshare.

The file is a JSON list of entries (plain, ``.json.gz``, or a ``.zip`` holding one JSON file, as
figshare serves ``jdft_3d-8-18-2021.json.zip``). Each entry is::

    {
      "jid": "JVASP-1002",
      "atoms": {                          # jarvis.core.atoms.Atoms.to_dict()
        "lattice_mat": [[a1], [a2], [a3]],  # lattice vectors as rows, Å
        "coords": [[x, y, z], ...],         # (N, 3): Cartesian Å if "cartesian" else fractional
        "elements": ["Si", "Si"],           # (N,) chemical symbols
        "abc": [a, b, c],                   # lattice lengths, Å (rounded to 6 decimals)
        "angles": [alpha, beta, gamma],     # degrees: alpha = angle(b, c), ...
        "cartesian": false,
        "props": ["", ""]                   # (N,) per-site strings, empty by default
      },
      "formation_energy_peratom": -0.42,    # eV/atom
      "optb88vdw_bandgap": 0.73,            # eV
      "mbj_bandgap": "na",                  # "na": not computed
      "ehull": 0.0, "bulk_modulus_kv": 88.6, ...
    }

Targets are the entry's scalar number fields; ``"na"`` (and null/NaN) reads as None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ase
import numpy as np
from ase.data import atomic_numbers

from sciml.data.crystals._io import (PathLike, dump_json, entry_records, is_jarvis_head, json_head, load_json,
                                     unknown_targets)
from sciml.data.crystals.records import CrystalRecord, named_targets
from sciml.data.crystals.validation import CrystalInputError, check_crystal
from sciml.data.formats import CRYSTALS, DataFormat, register_format

_STRUCTURE_KEYS = ("atoms", "jid")


def read_jarvis(
    path: PathLike,
    targets: Optional[Sequence[str]] = None,
    id_key: str = "jid",
    skip_bad: bool = False,
    skipped: Optional[List[Tuple[str, str]]] = None,
) -> List[CrystalRecord]:
    """Read a JARVIS-DFT JSON file (layout in the module docstring) into records.

    Args:
        path: ``*.json``, ``*.json.gz`` or ``*.zip`` holding one JSON list.
        targets: which fields become targets; None takes every field that holds a number (or
            ``"na"``/null) in any entry. A requested field absent from an entry reads as None.
        id_key: the entry's identifier field (``"jid"`` in ``dft_3d``).
        skip_bad: skip entries that fail the structure checks instead of raising.
        skipped: when given, ``(source, reason)`` is appended for every skipped entry.

    Returns:
        One record per entry, in file order; structures periodic with the entry's cell.

    Raises:
        CrystalInputError: unreadable file, not a list of entries, or (unless ``skip_bad``) an
            entry with a missing/singular lattice, unknown element, malformed coordinates,
            overlapping atoms or a non-numeric target; the message names the file and the jid.
        ValueError: a requested target that no entry has (a misspelt name).
    """
    entries = load_json(path)
    if not isinstance(entries, list):
        raise CrystalInputError(f"{path}: expected a JSON list of JARVIS entries, got {type(entries).__name__}")
    if targets is None:
        targets = _numeric_fields(entries, exclude=(id_key, *_STRUCTURE_KEYS))
    elif unknown_targets(entries, targets):
        available = _numeric_fields(entries, exclude=(id_key, *_STRUCTURE_KEYS))
        raise ValueError(f"{path}: no entry has the target(s) {unknown_targets(entries, targets)}; "
                         f"numeric fields: {', '.join(available)}")

    def parse(entry, source):
        if id_key not in entry:
            raise CrystalInputError(f"{source}: no {id_key!r} field")
        atoms = check_crystal(jarvis_atoms_to_ase(entry.get("atoms"), source), source)
        return atoms, named_targets(entry, targets, source)

    return entry_records(entries, path, id_key, parse, skip_bad, skipped)


def write_jarvis(records: Sequence[CrystalRecord], path: PathLike, cartesian: bool = False) -> None:
    """Write records as a JARVIS-DFT JSON list (layout in the module docstring).

    Each entry is ``{"jid": id, "atoms": {...}, **targets}`` with missing targets written as
    ``"na"``. ``cartesian`` selects Cartesian (Å) or fractional coordinates. ``.gz`` paths are
    gzipped and ``.zip`` paths hold one JSON member, like figshare's archives.
    """
    entries = []
    for record in records:
        entry: Dict[str, Any] = {"jid": record.id, "atoms": ase_to_jarvis_atoms(record.atoms, cartesian)}
        for name, value in record.targets.items():
            entry[name] = "na" if value is None else value
        entries.append(entry)
    dump_json(entries, path)


def jarvis_atoms_to_ase(atoms_dict: Any, source: str) -> ase.Atoms:
    """An ``ase.Atoms`` (pbc True) from a jarvis-tools ``Atoms.to_dict()`` dictionary.

    Raises:
        CrystalInputError: missing lattice, unknown element symbols, or coordinates that are not
            (N, 3) numbers for the N elements; the message starts with ``source``.
    """
    if not isinstance(atoms_dict, dict):
        raise CrystalInputError(f"{source}: no 'atoms' structure dictionary")
    if atoms_dict.get("lattice_mat") is None:
        raise CrystalInputError(f"{source}: missing lattice ('lattice_mat')")
    try:
        cell = np.asarray(atoms_dict["lattice_mat"], dtype=float)
        coords = np.asarray(atoms_dict.get("coords", []), dtype=float)
    except (TypeError, ValueError) as err:
        raise CrystalInputError(f"{source}: lattice or coordinates are not numbers ({err})") from None
    if cell.shape != (3, 3):
        raise CrystalInputError(f"{source}: lattice_mat must be 3x3, got shape {cell.shape}")
    elements = list(atoms_dict.get("elements", []))
    if not elements:
        raise CrystalInputError(f"{source}: no atoms")
    for position, symbol in enumerate(elements):
        if atomic_numbers.get(str(symbol), 0) == 0:
            raise CrystalInputError(f"{source}: unknown element {symbol!r} (atom {position})")
    if coords.shape != (len(elements), 3):
        raise CrystalInputError(f"{source}: coords must have shape ({len(elements)}, 3), got {coords.shape}")
    if atoms_dict.get("cartesian", False):
        return ase.Atoms(symbols=elements, positions=coords, cell=cell, pbc=True)
    return ase.Atoms(symbols=elements, scaled_positions=coords, cell=cell, pbc=True)


def ase_to_jarvis_atoms(atoms: ase.Atoms, cartesian: bool = False) -> Dict[str, Any]:
    """The jarvis-tools ``Atoms.to_dict()`` dictionary of ``atoms`` (keys in jarvis' order:
    lattice_mat, coords, elements, abc, angles, cartesian, props)."""
    cell = atoms.cell.array
    coords = atoms.positions if cartesian else np.linalg.solve(cell.T, atoms.positions.T).T
    lengths_angles = atoms.cell.cellpar()
    return {
        "lattice_mat": cell.tolist(),
        "coords": coords.tolist(),
        "elements": list(atoms.get_chemical_symbols()),
        "abc": [round(float(x), 6) for x in lengths_angles[:3]],
        "angles": [round(float(x), 6) for x in lengths_angles[3:]],
        "cartesian": bool(cartesian),
        "props": ["" for _ in range(len(atoms))],
    }


def _numeric_fields(entries: List[Any], exclude: Sequence[str]) -> List[str]:
    """Fields holding a number in at least one entry (bools excluded), in first-seen order."""
    names: Dict[str, None] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        for name, value in entry.items():
            if name not in exclude and name not in names and isinstance(value, (int, float)) and not isinstance(value, bool):
                names[name] = None
    return list(names)


def is_jarvis_file(path: Path) -> bool:
    """A JSON file (plain, ``.gz``, ``.zip``) whose entries carry ``jid`` and ``lattice_mat``."""
    head = json_head(path)
    return head is not None and is_jarvis_head(head)


register_format(DataFormat(name="jarvis", kind=CRYSTALS, read=read_jarvis, detect=is_jarvis_file,
                           description="a JARVIS-DFT dft_3d JSON list (.json, .gz, .zip)"))

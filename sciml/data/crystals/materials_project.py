"""Materials Project data: a JSON file of entries, or a directory of CIF files plus a table.

(a) A JSON file (plain or ``.gz``/``.zip``) holding a list of entries, a dict ``{id: entry}``, or
a dict with one list of entries (``{"data": [...]}``)::

    [{"material_id": "mp-149",
      "structure": {...},               # pymatgen Structure.as_dict(), or CIF text
      "formation_energy_per_atom": 0.0, # eV/atom
      "band_gap": 0.61},                # eV
     ...]

The MEGNet ``mp.2018.6.1.json`` layout (``structure`` as a CIF string) is read too. Every other
scalar number field is a target; null/``"na"``/NaN read as None.

(b) A directory of ``<id>.cif`` files plus a table of targets keyed by file stem: a CSV with a
header naming the id column (``material_id`` by default; else the first column), or a CGCNN
``id_prop.csv`` without header (id, then the target, named ``target``; further columns
``target_2``, ...), or JSON (a list of objects with the id field, or ``{id: {name: value}}``).
Structures without a table row get no targets; table rows without a CIF are ignored (logged).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sciml.data.crystals._io import (
    PathLike,
    entry_records,
    is_jarvis_head,
    is_matbench_head,
    json_head,
    load_json,
    logger,
    read_text,
    skip_or_raise,
    unknown_targets,
)
from sciml.data.crystals._pymatgen import structure_dict_to_ase
from sciml.data.crystals.cif import cif_text_to_atoms, read_cif
from sciml.data.crystals.records import CrystalRecord, as_target, named_targets
from sciml.data.crystals.validation import CrystalInputError, check_crystal
from sciml.data.formats import CRYSTALS, DataFormat, register_format

_STRUCTURE_KEYS = ("structure", "cif", "atoms")


def read_materials_project(
    path: PathLike,
    targets_path: Optional[PathLike] = None,
    id_key: str = "material_id",
    targets: Optional[Sequence[str]] = None,
    skip_bad: bool = False,
    skipped: Optional[List[Tuple[str, str]]] = None,
) -> List[CrystalRecord]:
    """Read Materials Project structures and targets (layouts in the module docstring).

    Args:
        path: a JSON file of entries (a), or a directory of ``*.cif`` files (b).
        targets_path: the target table for (b): CSV or JSON. When None, (b) looks for
            ``id_prop.csv``, ``targets.csv`` or ``targets.json`` inside the directory, and
            gives structures without targets if there is none.
        id_key: the id field of JSON entries and of the table.
        targets: which fields become targets; None takes every scalar number field.
        skip_bad: skip bad structures instead of raising.
        skipped: when given, ``(source, reason)`` is appended for every skipped structure.

    Returns:
        One record per structure: entry order for (a), sorted file names for (b).

    Raises:
        CrystalInputError: unreadable files or (unless ``skip_bad``) an invalid structure; the
            message names the file and the record id.
        ValueError: a requested target that no JSON entry has (a misspelt name).
    """
    path = Path(path)
    if path.is_dir():
        return _read_cif_directory(path, targets_path, id_key, targets, skip_bad, skipped)
    return _read_json_entries(path, id_key, targets, skip_bad, skipped)


def _read_json_entries(path, id_key, targets, skip_bad, skipped) -> List[CrystalRecord]:
    content = load_json(path)
    if isinstance(content, dict):
        lists = [v for v in content.values() if isinstance(v, list)]
        if len(content) == 1 and len(lists) == 1:
            entries = lists[0]
        else:  # {id: entry}
            entries = [dict(entry, **{id_key: key}) if isinstance(entry, dict) else entry for key, entry in content.items()]
    elif isinstance(content, list):
        entries = content
    else:
        raise CrystalInputError(f"{path}: expected a JSON list or object of entries, got {type(content).__name__}")
    if targets is not None and unknown_targets(entries, targets):
        raise ValueError(f"{path}: no entry has the target(s) {unknown_targets(entries, targets)}")

    def parse(entry, source):
        key = next((k for k in _STRUCTURE_KEYS if k in entry), None)
        if key is None:
            raise CrystalInputError(f"{source}: no structure (none of the fields {', '.join(_STRUCTURE_KEYS)})")
        structure = entry[key]
        if isinstance(structure, str):
            atoms = cif_text_to_atoms(structure, source)
        else:
            atoms = check_crystal(structure_dict_to_ase(structure, source), source)
        return atoms, _targets_of(entry, targets, exclude=(id_key, key), source=source)

    return entry_records(entries, path, id_key, parse, skip_bad, skipped)


def _read_cif_directory(directory, targets_path, id_key, targets, skip_bad, skipped) -> List[CrystalRecord]:
    if targets_path is None:
        found = [directory / n for n in ("id_prop.csv", "targets.csv", "targets.json") if (directory / n).is_file()]
        targets_path = found[0] if found else None
    table = {} if targets_path is None else read_target_table(targets_path, id_key)
    from sciml.data.structure_files import cif_files, structure_id

    files = cif_files(directory)  # *.cif, *.mcif, any case, gzipped or not
    if not files:
        raise CrystalInputError(f"{directory}: no *.cif files")
    stems = {structure_id(f) for f in files}
    orphans = [key for key in table if key not in stems]
    if orphans:
        logger.warning("%s: %d table rows have no CIF file (first: %s)", targets_path, len(orphans), orphans[0])
    records = []
    for file in files:
        stem = structure_id(file)
        source = f"{file} (record {stem})"
        try:
            atoms = read_cif(file)
            row = table.get(stem, {})
            values = _targets_of(row, targets, exclude=(), source=f"{targets_path} (record {stem})")
        except CrystalInputError as err:
            skip_or_raise(err, skip_bad, skipped, source)
            continue
        records.append(CrystalRecord(stem, atoms, values))
    return records


def read_target_table(path: PathLike, id_key: str = "material_id") -> Dict[str, Dict[str, Any]]:
    """A target table (CSV or JSON, see the module docstring) as ``{id: {name: raw value}}``.

    Raises:
        CrystalInputError: unreadable file or an unknown layout.
    """
    path = Path(path)
    if path.name.endswith((".json", ".json.gz", ".zip")):
        content = load_json(path)
        if isinstance(content, list):
            return {str(row[id_key]): {k: v for k, v in row.items() if k != id_key} for row in content if isinstance(row, dict) and id_key in row}
        if isinstance(content, dict):
            return {str(k): (v if isinstance(v, dict) else {"target": v}) for k, v in content.items()}
        raise CrystalInputError(f"{path}: expected a JSON list of objects or an object keyed by id")
    rows = [row for row in csv.reader(io.StringIO(read_text(path))) if row]
    if not rows:
        raise CrystalInputError(f"{path}: empty table")
    header = rows[0]
    if id_key in header or not _is_number(header[-1]):
        id_column = header.index(id_key) if id_key in header else 0
        names, body = header, rows[1:]
    else:  # CGCNN id_prop.csv: no header, id then values
        id_column = 0
        names = ["id", "target"] + [f"target_{k}" for k in range(2, len(header))]
        body = rows
    return {row[id_column]: {n: v for c, (n, v) in enumerate(zip(names, row)) if c != id_column} for row in body}


def _targets_of(entry: Dict[str, Any], targets: Optional[Sequence[str]], exclude: Sequence[str], source: str) -> Dict[str, Optional[float]]:
    if targets is None:
        values = {}
        for name, value in entry.items():
            if name in exclude or isinstance(value, str) and not (_is_number(value) or value.strip() in ("", "na", "nan")):
                continue  # text fields (formula, "Na", symmetry) are not targets
            try:
                values[name] = as_target(value)
            except ValueError:
                continue  # text or list fields (formula, symmetry, ...) are not targets
        return values
    return named_targets(entry, targets, source)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_materials_project_file(path: Path) -> bool:
    """A JSON file (plain, ``.gz``, ``.zip``) that is neither a MatBench table nor JARVIS entries."""
    head = json_head(path)
    return head is not None and not is_matbench_head(head) and not is_jarvis_head(head)


register_format(DataFormat(name="mp", kind=CRYSTALS, read=read_materials_project, detect=is_materials_project_file,
                           description="Materials Project entries in JSON, or a directory of CIFs plus a target table"))

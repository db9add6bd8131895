"""Any crystal dataset by path: recognise its format and return training-ready ``ase.Atoms``.

Formats (:data:`FORMATS`, guessed by :func:`detect_crystal_format`):

- ``"jarvis"``: a JARVIS-DFT JSON list (``dft_3d``), plain, ``.gz`` or ``.zip``;
- ``"matbench"``: a MatBench task file (pandas split JSON), plain or ``.gz``;
- ``"mp"``: Materials Project entries in JSON, or a directory of CIFs plus a target table;
- ``"cif"``: one CIF file, or a directory of CIF files plus a target table (``targets_path``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import ase

from sciml.data.crystals._io import PathLike, peek_text
from sciml.data.crystals.cif import read_cif
from sciml.data.crystals.jarvis import read_jarvis
from sciml.data.crystals.matbench import read_matbench
from sciml.data.crystals.materials_project import (
    read_materials_project,
    read_target_table,
)
from sciml.data.crystals.records import CrystalRecord, as_target, records_to_atoms

FORMATS = ("jarvis", "matbench", "mp", "cif")


def detect_crystal_format(path: PathLike) -> str:
    """The format of ``path`` (one of :data:`FORMATS`).

    A directory with CIF files or a CIF file (``.cif``, ``.mcif``, any case, ``.gz``) is ``"cif"``; a JSON file (``.json``,
    ``.gz``, ``.zip``) is ``"matbench"`` when it is a split table (``"columns"`` and
    ``"data"``), ``"jarvis"`` when its entries have ``jid`` and ``lattice_mat``, else ``"mp"``.

    Raises:
        ValueError: missing path, or none of the formats.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    from sciml.data.structure_files import cif_files, structure_kind

    if path.is_dir():
        if cif_files(path):
            return "cif"
        raise ValueError(f"{path}: a directory without *.cif files is not a crystal dataset")
    if structure_kind(path) == "cif":  # .cif, .mcif, any case, .gz
        return "cif"
    if path.name.endswith((".json", ".gz", ".zip")):
        head = peek_text(path).lstrip()
        if head.startswith("{") and '"columns"' in head and '"data"' in head:
            return "matbench"
        if '"jid"' in head and '"lattice_mat"' in head:
            return "jarvis"
        return "mp"
    raise ValueError(f"{path}: cannot tell the crystal dataset format; pass format= one of {', '.join(FORMATS)}")


def read_crystal_records(path: PathLike, format: Optional[str] = None, **kw: Any) -> List[CrystalRecord]:
    """The records of a dataset in any of :data:`FORMATS` (``format`` None guesses it); ``kw``
    goes to the format's reader (``read_jarvis``, ``read_matbench``, ``read_materials_project``;
    for ``"cif"`` also ``targets_path`` and ``id_key``)."""
    format = format or detect_crystal_format(path)
    if format == "jarvis":
        return read_jarvis(path, **kw)
    if format == "matbench":
        return read_matbench(path, **kw)[1]
    if format == "mp":
        return read_materials_project(path, **kw)
    if format == "cif":
        if Path(path).is_dir():
            return read_materials_project(path, **kw)
        from sciml.data.structure_files import structure_id

        atoms = read_cif(path)
        stem = structure_id(path)
        row = {}
        if kw.get("targets_path") is not None:
            row = read_target_table(kw["targets_path"], kw.get("id_key", "material_id")).get(stem, {})
        return [CrystalRecord(stem, atoms, {name: as_target(value) for name, value in row.items()})]
    raise ValueError(f"unknown crystal dataset format {format!r}; expected one of {', '.join(FORMATS)}")


def read_crystal_dataset(path: PathLike, format: Optional[str] = None, target: Optional[str] = None, **kw: Any) -> List[ase.Atoms]:
    """Read a crystal dataset for training on one scalar target.

    Args:
        path: the dataset file or directory.
        format: ``"jarvis"``, ``"matbench"``, ``"mp"`` or ``"cif"``; None guesses from the path
            (:func:`detect_crystal_format`).
        target: the target name (``"formation_energy_peratom"``, ``"e_form"``, ...). May be None
            for MatBench only, which then uses the file's target column.
        **kw: passed to the format's reader, e.g. ``skip_bad=True, skipped=[]``, ``task=`` for
            MatBench ids, ``targets_path=`` for CIF directories.

    Returns:
        Periodic ``ase.Atoms`` (positions Å, cell rows Å) with ``info[target]`` (float, the
        dataset's units) and ``info["id"]`` (str), in dataset order; structures without a value
        for the target are dropped.

    Raises:
        CrystalInputError: an invalid file or structure (a ValueError naming file and record).
        ValueError: unknown format or target, or no structure with a value for ``target``.
    """
    format = format or detect_crystal_format(path)
    if format == "matbench":
        name, records = read_matbench(path, **kw)
        if target is not None and target != name:
            raise ValueError(f"{path}: the MatBench target column is {name!r}, not {target!r}")
        target = name
    else:
        if target is None:
            raise ValueError(f"{path}: a target name is required for the {format!r} format")
        if format in ("jarvis", "mp") and "targets" not in kw:
            kw["targets"] = [target]
        records = read_crystal_records(path, format, **kw)
    try:
        atoms = records_to_atoms(records, target)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if not atoms:
        raise ValueError(f"{path}: none of the {len(records)} structures has a value for target {target!r}")
    return atoms

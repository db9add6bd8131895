"""Any crystal dataset by path: recognise its format and return training-ready ``ase.Atoms``.

The crystal formats are the registered formats of kind ``crystals`` (:mod:`sciml.data.formats`),
each registered by its reader's module and guessed by :func:`detect_crystal_format`:

- ``"jarvis"``: a JARVIS-DFT JSON list (``dft_3d``), plain, ``.gz`` or ``.zip``;
- ``"matbench"``: a MatBench task file (pandas split JSON), plain or ``.gz``;
- ``"mp"``: Materials Project entries in JSON, or a directory of CIFs plus a target table;
- ``"cif"``: one CIF file, or a directory of CIF files plus a target table (``targets_path``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import ase

from sciml.data.crystals._io import PathLike
from sciml.data.crystals.matbench import read_matbench
from sciml.data.crystals.records import CrystalRecord, records_to_atoms
from sciml.data.formats import CRYSTALS, detect_format, format_names, get_format


def detect_crystal_format(path: PathLike) -> str:
    """The crystal format of ``path`` (a registered format of kind ``crystals``).

    A directory with CIF files or a CIF file (``.cif``, ``.mcif``, any case, ``.gz``) is ``"cif"``; a JSON file (``.json``,
    ``.gz``, ``.zip``) is ``"matbench"`` when it is a split table (``"columns"`` and
    ``"data"``), ``"jarvis"`` when its entries have ``jid`` and ``lattice_mat``, else ``"mp"``.

    Raises:
        ValueError: missing path, or none of the formats.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    entry = detect_format(path, CRYSTALS)
    if entry is not None:
        return entry.name
    if path.is_dir():
        raise ValueError(f"{path}: a directory without *.cif files is not a crystal dataset")
    raise ValueError(f"{path}: cannot tell the crystal dataset format; pass format= one of "
                     f"{', '.join(format_names(CRYSTALS))}")


def read_crystal_records(path: PathLike, format: Optional[str] = None, **kw: Any) -> List[CrystalRecord]:
    """The records of a dataset in any crystal format (``format`` None guesses it); ``kw`` goes to
    the format's reader (``read_jarvis``, ``read_matbench``, ``read_materials_project``; for
    ``"cif"`` also ``targets_path`` and ``id_key``)."""
    format = format or detect_crystal_format(path)
    if format not in format_names(CRYSTALS):
        raise ValueError(f"unknown crystal dataset format {format!r}; expected one of {', '.join(format_names(CRYSTALS))}")
    return get_format(format).read(path, **kw)


def read_crystal_dataset(path: PathLike, format: Optional[str] = None, target: Optional[str] = None, **kw: Any) -> List[ase.Atoms]:
    """Read a crystal dataset for training on one scalar target.

    Args:
        path: the dataset file or directory.
        format: a crystal format (``"jarvis"``, ``"matbench"``, ``"mp"``, ``"cif"``); None guesses from the path
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

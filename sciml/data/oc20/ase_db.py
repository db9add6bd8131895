"""OC20 structures in an ASE database (``ase.db``: SQLite ``.db`` or ``.json``).

Each row holds an adslab: numbers, positions, cell, pbc, ``tags``, its ``FixAtoms`` constraint
and, when labelled, the DFT total energy and forces (``row.energy``, ``row.forces``).
Per-structure OC20 values are read from the row's key-value pairs when present: ``sid``,
``fid``, ``reference_energy``, ``initial_energy``, ``relaxed_energy``; IS2RS relaxed positions
from ``row.data["relaxed_positions"]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import ase
import ase.db
import numpy as np

from sciml.data.formats import OC20, DataFormat, register_format
from sciml.data.oc20.records import Record, atoms_record, check_record
from sciml.io.files import atomic_path

_KEY_VALUES = ("sid", "fid", "reference_energy", "initial_energy", "relaxed_energy")


def read_ase_db(path: Union[str, os.PathLike], subtract_reference: bool = True) -> Iterator[Record]:
    """Records of every row, in id order.

    ``energy`` is the row's total energy, minus its ``reference_energy`` key when that is present
    and ``subtract_reference``; the total is kept as ``total_energy`` when a reference exists.

    Raises:
        ValueError: a missing file, one that is not an ASE database, or a bad row (named by id).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")  # ase.db.connect would create an empty database
    try:
        rows = list(ase.db.connect(str(path)).select())
    except Exception as err:  # sqlite3 and json raise many types for files of another kind
        raise ValueError(f"{path}: not a readable ASE database ({type(err).__name__}: {err})") from None
    if not rows:
        raise ValueError(f"{path}: the database holds no rows")
    for row in rows:
        where = f"{path}: row id {row.id}"
        try:
            atoms = row.toatoms()
        except Exception as err:
            raise ValueError(f"{where}: cannot build the structure ({type(err).__name__}: {err})") from None
        yield check_record(_row_record(row, atoms, subtract_reference), where)


def write_ase_db(
    path: Union[str, os.PathLike],
    frames: Sequence[ase.Atoms],
    key_values: Optional[Sequence[dict]] = None,
) -> Path:
    """Write labelled frames (with tags and ``FixAtoms``) into a new ASE database, atomically.

    ``key_values`` holds per-frame key-value pairs (e.g. ``sid``, ``fid``,
    ``reference_energy``). The format follows the suffix: ``.db`` SQLite, ``.json`` JSON.
    """
    path = Path(path)
    key_values = key_values or [{}] * len(frames)
    if len(key_values) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(key_values)} key-value sets")
    kind = {".db": "db", ".json": "json"}.get(path.suffix)
    if kind is None:
        raise ValueError(f"{path}: an ASE database name ends in .db or .json")
    with atomic_path(path) as tmp:
        tmp.unlink()  # ase.db opens an existing empty file as a broken database
        with ase.db.connect(str(tmp), type=kind, append=False) as db:
            for atoms, pairs in zip(frames, key_values):
                db.write(atoms, **pairs)
    return path


def _row_record(row, atoms: ase.Atoms, subtract_reference: bool) -> Record:
    record = atoms_record(atoms)
    pairs = row.key_value_pairs
    for name in _KEY_VALUES:
        if name in pairs:
            record[name] = np.array(pairs[name], dtype=np.int64 if name in ("sid", "fid") else np.float64)
    total = row.get("energy")
    if total is not None:
        reference = pairs.get("reference_energy")
        if reference is not None:
            record["total_energy"] = np.array(float(total))
        record["energy"] = np.array(float(total) - (reference if subtract_reference and reference is not None else 0.0))
    if row.get("forces") is not None:
        record["forces"] = np.array(row.forces, dtype=np.float64)
    relaxed = row.data.get("relaxed_positions") if row.get("data") is not None else None
    if relaxed is not None:
        record["relaxed_positions"] = np.asarray(relaxed, dtype=np.float64)
    return record


# Not detected when no format is named: ASE databases are read by the plain ase reader then.
register_format(DataFormat(
    name="ase-db", kind=OC20, read=read_ase_db, detect=lambda path: path.is_file() and path.suffix in (".db", ".json"),
    description="an ASE database (*.db SQLite, *.json) read the OC20 way"))

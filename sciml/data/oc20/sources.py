"""Any OC20 source by path: recognise its format, iterate its records, cache it, load graphs.

Formats (:func:`detect_format`):

- ``"s2ef-extxyz"``: a directory of S2EF ``*.extxyz[.xz]`` + ``*.txt[.xz]`` files, or one such
  trajectory file (or a list of them);
- ``"ase-db"``: an ASE database (``*.db`` SQLite, ``*.json``);
- ``"legacy-lmdb"``: a fairchem LMDB file, or a directory of ``*.lmdb`` shards;
- ``"sciml-cache"``: an LMDB file written by :func:`preprocess`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from sciml.data.oc20.ase_db import read_ase_db
from sciml.data.oc20.cache import CachedDataset, read_cache_metadata, write_cache
from sciml.data.oc20.legacy_lmdb import LegacyLmdb
from sciml.data.oc20.records import Record, graph_from_record
from sciml.data.oc20.s2ef_extxyz import read_s2ef_extxyz
from sciml.graph.atomic_graph import AtomicGraph
from sciml.graph.spec import GraphSpec

PathLike = Union[str, os.PathLike]
FORMATS = ("s2ef-extxyz", "ase-db", "legacy-lmdb", "sciml-cache")
_LMDB_MAGIC = (0xBEEFC0DE).to_bytes(4, "little")  # mm_magic of the first meta page, at byte 16
_PROGRESS_THRESHOLD = 1000


def detect_format(source: Union[PathLike, Sequence[PathLike]]) -> Optional[str]:
    """The OC20 format of ``source`` (one of :data:`FORMATS`), or None when it is none of them.

    Raises:
        ValueError: the path does not exist.
    """
    if not isinstance(source, (str, os.PathLike)):
        return "s2ef-extxyz"
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        if any(n.endswith((".extxyz.xz", ".extxyz")) for n in names):
            return "s2ef-extxyz"
        return "legacy-lmdb" if any(n.endswith(".lmdb") for n in names) else None
    if path.name.endswith((".extxyz.xz", ".extxyz")):
        stem = path.name[: -len(".extxyz.xz")] if path.name.endswith(".xz") else path.name[: -len(".extxyz")]
        companions = (path.parent / f"{stem}.txt", path.parent / f"{stem}.txt.xz")
        return "s2ef-extxyz" if any(c.is_file() for c in companions) else None
    if path.suffix in (".db", ".json"):
        return "ase-db"
    if _is_lmdb_file(path):
        return "sciml-cache" if read_cache_metadata(path) is not None else "legacy-lmdb"
    return None


def iter_records(
    source: Union[PathLike, Sequence[PathLike]], subtract_reference: bool = True, format: Optional[str] = None
) -> Iterator[Record]:
    """Every record of an OC20 source, in file order.

    ``subtract_reference`` applies to S2EF extxyz files and ASE databases that carry reference
    energies (the energy becomes the adsorption energy); LMDBs and caches hold energies as they
    were written. ``format`` overrides :func:`detect_format`.

    Raises:
        ValueError: an unrecognised source or any reader error (naming file and record).
    """
    format = format or detect_format(source)
    if format == "s2ef-extxyz":
        yield from read_s2ef_extxyz(source, subtract_reference)
    elif format == "ase-db":
        yield from read_ase_db(source, subtract_reference)
    elif format == "legacy-lmdb":
        yield from LegacyLmdb(source)
    elif format == "sciml-cache":
        cache = CachedDataset(source)
        for index in range(len(cache)):
            yield cache.record(index)
    else:
        raise ValueError(f"{source}: not an OC20 source (expected a directory of S2EF *.extxyz.xz + *.txt files, "
                         f"an ASE database, a fairchem *.lmdb file or directory, or a sciml cache)"
                         if format is None else f"unknown OC20 format {format!r}; choose from {', '.join(FORMATS)}")


def preprocess(
    source: Union[PathLike, Sequence[PathLike]],
    output: PathLike,
    subtract_reference: bool = True,
    force: bool = False,
) -> Dict[str, Any]:
    """Store every record of ``source`` in a sciml cache at ``output``; returns its metadata.

    Raises:
        ValueError: ``output`` exists and ``force`` is not set; any reader error.
    """
    output = Path(output)
    if output.exists() and not force:
        raise ValueError(f"{output} already exists; pass force=True (--force) to overwrite it")
    format = detect_format(source)
    records = iter_records(source, subtract_reference, format)
    name = str(source) if isinstance(source, (str, os.PathLike)) else ", ".join(str(s) for s in source)
    return write_cache(output, tqdm(records, desc="caching", unit="record", disable=None), name,
                       format=format, subtract_reference=subtract_reference)


def load_graphs(
    source: Union[PathLike, Sequence[PathLike]],
    cutoff: "float | GraphSpec | None" = None,
    max_neighbors: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    subtract_reference: bool = True,
    format: Optional[str] = None,
) -> List[AtomicGraph]:
    """Every structure of an OC20 source as an :class:`AtomicGraph` (edges within ``cutoff``, or
    as a :class:`~sciml.graph.GraphSpec` says: see :func:`~sciml.data.oc20.records.graph_from_record`).

    Errors while building a graph name the record. A progress bar shows for large sources on a
    terminal.
    """
    graphs = []
    records = iter_records(source, subtract_reference, format)
    for number, record in enumerate(tqdm(records, desc="building graphs", unit="structure", disable=None,
                                         delay=1.0, miniters=_PROGRESS_THRESHOLD)):
        try:
            graphs.append(graph_from_record(record, cutoff, max_neighbors, dtype))
        except ValueError as err:
            raise ValueError(f"{source}: record {number}: {err}") from None
    if not graphs:
        raise ValueError(f"{source}: holds no structures")
    return graphs


def _is_lmdb_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(20)
    except OSError:
        return False
    return len(head) == 20 and head[16:20] == _LMDB_MAGIC

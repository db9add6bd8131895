"""Any OC20 source by path: recognise its format, iterate its records, cache it, load graphs.

The OC20 formats are the registered formats of kind ``oc20`` (:mod:`sciml.data.formats`):
``s2ef-extxyz``, ``ase-db``, ``legacy-lmdb`` and ``sciml-cache``, each registered by its reader's
module. ``oc20`` (``data.format: oc20``) reads any of them, recognised by :func:`detect_format`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from sciml.data.formats import OC20, DataFormat, format_names, get_format, register_format
from sciml.data.formats import detect_format as detect_registered_format
from sciml.data.oc20.cache import write_cache
from sciml.data.oc20.records import Record, graph_from_record
from sciml.graph.atomic_graph import AtomicGraph
from sciml.graph.spec import GraphSpec

PathLike = Union[str, os.PathLike]
_PROGRESS_THRESHOLD = 1000


def detect_format(source: Union[PathLike, Sequence[PathLike]]) -> Optional[str]:
    """The OC20 format of ``source`` (a registered format of kind ``oc20``; a list of paths is
    S2EF trajectories), or None when it is none of them.

    Raises:
        ValueError: the path does not exist.
    """
    if not isinstance(source, (str, os.PathLike)):
        return "s2ef-extxyz"
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{path}: no such file or directory")
    entry = detect_registered_format(path, OC20)
    return entry.name if entry is not None else None


def iter_records(
    source: Union[PathLike, Sequence[PathLike]], subtract_reference: bool = True, format: Optional[str] = None
) -> Iterator[Record]:
    """Every record of an OC20 source, in file order.

    ``subtract_reference`` applies to S2EF extxyz files and ASE databases that carry reference
    energies (the energy becomes the adsorption energy); LMDBs and caches hold energies as they
    were written. ``format`` (an OC20 format name, or ``oc20``) overrides :func:`detect_format`.

    Raises:
        ValueError: an unrecognised source or any reader error (naming file and record).
    """
    if format in (None, "oc20"):
        format = detect_format(source)
    if format is None:
        raise ValueError(f"{source}: not an OC20 source (expected a directory of S2EF *.extxyz.xz + *.txt files, "
                         f"an ASE database, a fairchem *.lmdb file or directory, or a sciml cache)")
    readers = [name for name in format_names(OC20) if name != "oc20"]
    if format not in readers:
        raise ValueError(f"unknown OC20 format {format!r}; choose from {', '.join(readers)}")
    yield from get_format(format).read(source, subtract_reference)


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



register_format(DataFormat(
    name="oc20", kind=OC20, read=iter_records,
    description="any OC20 source: S2EF extxyz + txt, ASE database read the OC20 way, fairchem LMDB, sciml cache"))

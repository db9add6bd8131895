"""The sciml OC20 cache: records stored as raw numpy arrays in one LMDB file, read at random.

Keys ``b"0"`` .. ``b"N-1"`` hold records; ``b"__meta__"`` a JSON object (``format``,
``format_version``, ``count``, ``fields`` name -> numpy dtype, ``source``, ``sciml_version`` and
how the source was read); ``b"__natoms__"`` the atom count of every record as little-endian
int64, so a batch sampler can balance atoms without reading records.

A record value is ``uint32 header length | JSON header [[name, dtype, shape], ...] | arrays``,
each array's raw little-endian bytes starting at a multiple of 8. Decoding is a JSON parse and
one copy per field (no pickle, no ``torch.load``), many times faster than fairchem's pickled
tensors, and safe to read from untrusted files.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from sciml.data.formats import OC20, DataFormat, register_format
from sciml.data.oc20._lmdb import environment, is_lmdb_file, write_lmdb
from sciml.data.oc20.records import Record, check_record, graph_from_record
from sciml.graph.atomic_graph import AtomicGraph
from sciml.version import __version__

FORMAT = "sciml-oc20-cache"
FORMAT_VERSION = 1
META_KEY = b"__meta__"
NATOMS_KEY = b"__natoms__"
_HEADER = struct.Struct("<I")
_ALIGN = 8


def encode_record(record: Record) -> bytes:
    """The bytes of one record (see the module docstring); only bool/int/float arrays."""
    layout, chunks = [], []
    for name, value in record.items():
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"field {name!r} has dtype {array.dtype}; the cache stores bool, integer and float arrays")
        array = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)  # keeps 0-d shapes
        layout.append([name, array.dtype.str, list(array.shape)])
        chunks.append(array.tobytes())
    header = json.dumps(layout, separators=(",", ":")).encode()
    out = bytearray(_HEADER.pack(len(header)) + header)
    for chunk in chunks:
        out += bytes(-len(out) % _ALIGN) + chunk
    return bytes(out)


def decode_record(buffer: Union[bytes, memoryview]) -> Record:
    """The record :func:`encode_record` wrote (arrays own their memory)."""
    (length,) = _HEADER.unpack_from(buffer, 0)
    offset = _HEADER.size + length
    record: Record = {}
    for name, dtype, shape in json.loads(bytes(buffer[_HEADER.size:offset])):
        dtype = np.dtype(dtype)
        offset += -offset % _ALIGN
        count = int(np.prod(shape, dtype=np.int64))
        record[name] = np.frombuffer(buffer, dtype, count, offset).reshape(shape).copy()
        offset += count * dtype.itemsize
    if offset != len(buffer):
        raise ValueError(f"{len(buffer) - offset} bytes left over after the last field")
    return record


def write_cache(
    path: Union[str, os.PathLike], records: Iterable[Record], source: str, **read_options: Any
) -> Dict[str, Any]:
    """Write records into a new cache at ``path`` (atomically); returns its metadata.

    ``source`` (where the records came from) and ``read_options`` (how they were read, e.g.
    ``subtract_reference=True``) are stored in the metadata. Every record must have the fields
    and dtypes of the first.
    """
    natoms: List[int] = []
    fields: Dict[str, str] = {}
    meta: Dict[str, Any] = {}

    def items() -> Iterator[Tuple[bytes, bytes]]:
        for index, record in enumerate(records):
            layout = {name: np.asarray(value).dtype.str for name, value in record.items()}
            if index == 0:
                fields.update(layout)
            elif layout != fields:
                raise ValueError(f"{source}: record {index} has fields {layout}, the first record {fields}; "
                                 f"a cache holds records of one kind")
            natoms.append(int(record["positions"].shape[0]))
            yield str(index).encode("ascii"), encode_record(record)
        if not natoms:
            raise ValueError(f"{source}: holds no records")
        meta.update(format=FORMAT, format_version=FORMAT_VERSION, count=len(natoms), fields=fields,
                    source=str(source), read_options=read_options, sciml_version=__version__)
        yield NATOMS_KEY, np.asarray(natoms, dtype="<i8").tobytes()
        yield META_KEY, json.dumps(meta).encode()

    write_lmdb(path, items())
    return meta


def read_cache_metadata(path: Union[str, os.PathLike]) -> Optional[Dict[str, Any]]:
    """The metadata of a sciml cache, or None when ``path`` is an LMDB file of another kind.

    Raises:
        ValueError: a missing file or one that is not an LMDB; a cache of a newer format.
    """
    with environment(path).begin() as txn:
        raw = txn.get(META_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        raise ValueError(f"{path}: corrupted cache metadata") from None
    if meta.get("format") != FORMAT:
        return None
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: cache format version {meta['format_version']} is newer than this sciml reads "
                         f"({FORMAT_VERSION}); upgrade sciml or preprocess again")
    return meta


class CachedDataset(Dataset):
    """A torch ``Dataset`` of :class:`AtomicGraph` over a sciml cache.

    ``dataset[i]`` is one structure; its edges are built within ``cutoff`` Å (at most
    ``max_neighbors`` per atom) when ``cutoff`` is given, else left to the caller
    (:meth:`AtomicGraph.with_edges`). Floating tensors are ``dtype``. Use
    ``DataLoader(dataset, collate_fn=AtomicGraph.collate, ...)``; any number of workers may read
    at once: each process opens the LMDB file on first access, read-only, without locks.

    Attributes:
        path: the cache file. metadata: its metadata dict. natoms: (len,) int64 atom counts.

    Raises:
        ValueError: the file is missing, not an LMDB or not a sciml cache; on access, a missing
            or corrupted record (the message names the file and the record).
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        cutoff: Optional[float] = None,
        max_neighbors: Optional[int] = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.path = Path(path)
        meta = read_cache_metadata(self.path)
        if meta is None:
            raise ValueError(f"{self.path}: not a sciml OC20 cache (no {META_KEY.decode()} entry); "
                             f"make one with sciml.data.oc20.preprocess")
        self.metadata = meta
        with environment(self.path).begin() as txn:
            raw = txn.get(NATOMS_KEY)
        if raw is None or len(raw) != 8 * meta["count"]:
            raise ValueError(f"{self.path}: corrupted cache ({NATOMS_KEY.decode()} entry missing or of the wrong size)")
        self.natoms = np.frombuffer(raw, dtype="<i8").astype(np.int64)
        self.cutoff, self.max_neighbors, self.dtype = cutoff, max_neighbors, dtype

    def __len__(self) -> int:
        return int(self.metadata["count"])

    def record(self, index: int) -> Record:
        """Record ``index`` as stored (numpy arrays with the source's dtypes)."""
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records in {self.path}")
        where = f"{self.path}: record {index}"
        with environment(self.path).begin(buffers=True) as txn:
            raw = txn.get(str(index).encode("ascii"))
            if raw is None:
                raise ValueError(f"{where}: missing (the cache says it holds {len(self)} records)")
            try:
                record = decode_record(raw)
            except (ValueError, TypeError, KeyError, struct.error) as err:
                raise ValueError(f"{where}: corrupted record ({type(err).__name__}: {err})") from None
        return check_record(record, where)

    def __getitem__(self, index: int) -> AtomicGraph:
        return graph_from_record(self.record(index), self.cutoff, self.max_neighbors, self.dtype)


def read_cached_records(source: Union[str, os.PathLike], subtract_reference: bool = True) -> Iterator[Record]:
    """The records of a sciml cache, in order (as they were written: ``subtract_reference`` does
    not apply)."""
    cache = CachedDataset(source)
    for index in range(len(cache)):
        yield cache.record(index)


register_format(DataFormat(
    name="sciml-cache", kind=OC20, read=read_cached_records,
    detect=lambda path: is_lmdb_file(path) and read_cache_metadata(path) is not None, auto_detect=True,
    description="an LMDB file written by sciml data preprocess"))

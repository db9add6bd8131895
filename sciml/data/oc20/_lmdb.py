"""LMDB plumbing shared by the legacy-LMDB and cache modules: open read-only, write atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Tuple

import lmdb

from sciml.io.files import atomic_path

_INITIAL_MAP_SIZE = 1 << 26  # 64 MiB; doubled whenever a write does not fit


def open_readonly(path: "str | os.PathLike") -> lmdb.Environment:
    """Open a single-file LMDB for reading from any number of processes.

    ``lock=False`` (no lock file, no reader table: readers never block each other and a read-only
    directory works) and ``readahead=False`` (random access over files larger than memory).
    Open one environment per process: an environment must not cross a ``fork``.

    Raises:
        ValueError: the path is missing or is not an LMDB file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        return lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False,
                         max_readers=2048)
    except lmdb.Error as err:
        raise ValueError(f"{path}: not a readable LMDB file ({type(err).__name__}: {err})") from None


def write_lmdb(path: "str | os.PathLike", items: Iterable[Tuple[bytes, bytes]], batch: int = 1000) -> int:
    """Write ``(key, value)`` pairs into a new single-file LMDB at ``path``; returns their count.

    The file is built beside ``path`` and renamed over it at the end, so a failed write leaves no
    half-written database. Entries are committed ``batch`` at a time and the memory map grows as
    needed.
    """
    count = 0
    with atomic_path(path) as tmp:
        env = lmdb.open(str(tmp), subdir=False, map_size=_INITIAL_MAP_SIZE, lock=False, meminit=False)
        try:
            pending = []
            for item in items:
                pending.append(item)
                if len(pending) >= batch:
                    _commit(env, pending)
                    count += len(pending)
                    pending = []
            _commit(env, pending)
            count += len(pending)
            env.sync()
        finally:
            env.close()
    return count


def _commit(env: lmdb.Environment, items: list) -> None:
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)

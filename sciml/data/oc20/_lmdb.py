"""LMDB plumbing shared by the legacy-LMDB and cache modules: one read-only environment per file
and process, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, Tuple

import lmdb

from sciml.io.files import atomic_path

_LMDB_MAGIC = (0xBEEFC0DE).to_bytes(4, "little")  # mm_magic of the first meta page, at byte 16
_INITIAL_MAP_SIZE = 1 << 26  # 64 MiB; doubled whenever a write does not fit
# path -> ((pid, st_dev, st_ino), environment): see environment()
_ENVIRONMENTS: Dict[str, Tuple[Tuple[int, int, int], lmdb.Environment]] = {}


def environment(path: "str | os.PathLike") -> lmdb.Environment:
    """This process's read-only environment of a single-file LMDB, opened on first use.

    LMDB allows one environment per file and process, so every reader of a file shares one,
    kept open for the life of the process. An environment inherited through ``fork`` (a
    DataLoader worker) or one whose file has since been replaced is closed here and opened
    afresh. ``lock=False`` (no lock file or reader table: readers never block each other and a
    read-only directory works), ``readahead=False`` (random access over files larger than memory).

    Raises:
        ValueError: the path is missing or is not an LMDB file.
    """
    key = os.fspath(path)
    try:
        stat = os.stat(key)
    except OSError:
        raise ValueError(f"{path}: no such file") from None
    identity = (os.getpid(), stat.st_dev, stat.st_ino)
    known = _ENVIRONMENTS.get(key)
    if known is not None:
        if known[0] == identity:
            return known[1]
        known[1].close()
        del _ENVIRONMENTS[key]
    if not Path(key).is_file():
        raise ValueError(f"{path}: not a file")
    try:
        env = lmdb.open(key, subdir=False, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as err:
        raise ValueError(f"{path}: not a readable LMDB file ({type(err).__name__}: {err})") from None
    _ENVIRONMENTS[key] = (identity, env)
    return env


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


def is_lmdb_file(path: Path) -> bool:
    """Whether ``path`` is a single-file LMDB (by the magic number of its first meta page)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(20)
    except OSError:
        return False
    return len(head) == 20 and head[16:20] == _LMDB_MAGIC

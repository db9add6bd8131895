"""Atomic file writes: a failed or interrupted write never damages an existing file."""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. The file gets
    the permissions an ordinary write would give it: those of the file it replaces, else
    ``0o666`` less the process's umask (a temporary file alone would be private, 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, new_file_mode(path))
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def new_file_mode(path: Path) -> int:
    """Permission bits for writing ``path``: those of the existing file, else 0o666 & ~umask."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0o022)  # reading the umask means setting it; put it back at once
        os.umask(umask)
        return 0o666 & ~umask


def write_extxyz(path: "str | os.PathLike", frames) -> Path:
    """Write ase.Atoms frames to ``path`` as extxyz, atomically."""
    from ase.io import write

    with atomic_path(path) as tmp:
        write(tmp, frames, format="extxyz")
    return Path(path)


def file_sha256(path: "str | os.PathLike") -> str:
    """Hex SHA-256 digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

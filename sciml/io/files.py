"""Atomic file writes: a failed or interrupted write never damages an existing file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_extxyz(path: "str | os.PathLike", frames) -> Path:
    """Write ase.Atoms frames to ``path`` as extxyz, atomically."""
    from ase.io import write

    with atomic_path(path) as tmp:
        write(tmp, frames, format="extxyz")
    return Path(path)

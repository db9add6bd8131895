"""What a file looks like from its first bytes, so that a wrong file given as a checkpoint is
named for what it is ("it looks like extxyz") instead of failing inside ``torch.load``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

_HEAD_BYTES = 4096
_MAGIC = (
    (b"\x89HDF\r\n\x1a\n", "HDF5"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"BZh", "a bzip2 archive"),
    (b"SQLite format 3\x00", "an SQLite database (ase .db)"),
    (b"MATLAB 5.0 MAT-file", "a MATLAB .mat file"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
)
_NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"


def is_torch_file(path: "str | os.PathLike") -> bool:
    """Whether the file starts as ``torch.save`` writes: a zip archive or a pickle (legacy format)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def looks_like(path: "str | os.PathLike") -> str:
    """A short description of the file's kind: ``extxyz``, ``xyz``, ``JSON``, ``CSV``, ``CIF``,
    ``POSCAR``, ``YAML``, a binary format by its magic number, or ``text``/``binary data``."""
    with open(path, "rb") as handle:
        head = handle.read(_HEAD_BYTES)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data"
    kind = _text_kind(text)
    return kind if kind is not None else ("empty" if not text.strip() else "text")


def _text_kind(text: str) -> Optional[str]:
    lines = [line.strip() for line in text.splitlines()]
    content = [line for line in lines if line and not line.startswith("#")]
    if not content:
        return None
    first = content[0]
    if first[0] in "{[":
        return "JSON"
    if first.startswith("data_") or any(line.startswith("_cell_length_a") for line in content):
        return "CIF"
    if re.fullmatch(r"\d+", lines[0]) and len(lines) > 1:
        return "extxyz" if re.search(r"\b(Lattice|Properties)=", lines[1]) else "xyz"
    if len(lines) > 4 and re.fullmatch(_NUMBER, lines[1]) and all(
            re.fullmatch(rf"{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}", line) for line in lines[2:5]):
        return "POSCAR"
    if len(content) > 1 and content[0].count(",") >= 1 and all(
            line.count(",") == content[0].count(",") for line in content[1:5]):
        return "CSV"
    if re.match(r"^[A-Za-z_][\w.-]*\s*:(\s|$)", first):
        return "YAML"
    return None


def describe_wrong_file(path: "str | os.PathLike", expected: str) -> str:
    """``"<path> is not <expected> (it looks like <kind>)"``."""
    return f"{Path(path)} is not {expected} (it looks like {looks_like(path)})"

"""The resumable journal of batch inference: ``OUTPUT.parts``, one append-only JSON-lines file per rank.

Each rank appends one JSON line per structure to ``OUTPUT.parts/rank-<r>.jsonl``
(:class:`PartWriter`), flushed and fsynced after every batch, so a killed job loses at most the
batch in flight. :meth:`PredictionParts.scan` finds every key already done in any part file,
whatever the number of ranks then and now; a line cut short by the kill is ignored (and cut off by
:meth:`PredictionParts.repair`) and its structure predicted again. ``OUTPUT.parts/job.json`` holds
the caller's job description; a resume under another description is refused.

Part lines::

    {"key": str, "file": str, "index": int, "formula": str, "atoms": int,
     "energy": eV, "energies": (n,) eV, "forces": (n, 3) eV/Å,
     "stress": (3, 3) eV/Å^3,                                          # each when the model gives it
     "properties": {name: float or nested list}}                      # other per-structure outputs
    {"key": str, "file": str, "index": int, "error": str}             # a structure that failed
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class PartsIndex:
    """Where each key's record is: ``results[key] = (part number, byte offset)``,
    ``errors[key] = message``; ``torn[part number] = length of its valid prefix`` for part files
    whose last line was cut short; ``fields``: outputs seen in results (summary columns)."""

    files: List[Path]
    results: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    errors: Dict[str, str] = field(default_factory=dict)
    torn: Dict[int, int] = field(default_factory=dict)
    fields: Dict[str, None] = field(default_factory=dict)

    def done(self, retry_errors: bool = False) -> set:
        return set(self.results) if retry_errors else set(self.results) | set(self.errors)


class PredictionParts:
    """The folder ``OUTPUT.parts``: ``job.json`` and one append-only ``rank-<r>.jsonl`` per rank."""

    def __init__(self, output: "str | os.PathLike"):
        self.path = Path(f"{output}.parts")

    def part(self, rank: int) -> Path:
        return self.path / f"rank-{rank}.jsonl"

    def files(self) -> List[Path]:
        return sorted(self.path.glob("rank-*.jsonl"), key=lambda p: p.name)

    def check_job(self, job: Optional[dict]) -> None:
        """Write ``job.json`` in a new folder; refuse a folder written for another job."""
        if job is None:
            return
        path = self.path / "job.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = None
            if saved != job:
                raise ValueError(f"{self.path} holds predictions of another job ({path}: {saved}, now: {job}); "
                                 f"pass --force to start over")
            return
        from sciml.io.files import atomic_path

        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(job))

    def scan(self, wanted: Optional[set] = None) -> PartsIndex:
        """Read every part file (records of keys outside ``wanted`` are ignored). A result beats
        an error for the same key; a line that does not parse is skipped."""
        index = PartsIndex(self.files())
        for number, path in enumerate(index.files):
            offset = 0
            with open(path, "rb") as handle:
                for line in handle:
                    start, offset = offset, offset + len(line)
                    if not line.endswith(b"\n"):  # the last line of a killed job
                        index.torn[number] = start
                        break
                    try:
                        record = json.loads(line)
                        key = record["key"]
                    except (ValueError, KeyError, TypeError):
                        continue
                    if wanted is not None and key not in wanted:
                        continue
                    if "error" in record:
                        if key not in index.results:
                            index.errors.setdefault(key, str(record["error"]))
                    elif key not in index.results:
                        index.errors.pop(key, None)
                        index.results[key] = (number, start)
                        index.fields.update(dict.fromkeys(output_fields(record)))
        return index

    def repair(self, index: PartsIndex) -> None:
        """Cut the torn last lines off, so that appending starts on a fresh line."""
        for number, length in index.torn.items():
            with open(index.files[number], "r+b") as handle:
                handle.truncate(length)
                os.fsync(handle.fileno())

    def records(self, index: PartsIndex, keys: Iterable[str]) -> Iterator[dict]:
        """The result records of ``keys``, in that order."""
        handles = [open(path, "rb") for path in index.files]
        try:
            for key in keys:
                number, offset = index.results[key]
                handles[number].seek(offset)
                yield json.loads(handles[number].readline())
        finally:
            for handle in handles:
                handle.close()


class PartWriter:
    """Appends records to one part file, one JSON line each; ``write`` returns once they are on disk."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "ab")

    def write(self, records: Sequence[dict]) -> None:
        self._handle.write("".join(json.dumps(r) + "\n" for r in records).encode())
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def output_fields(record: dict) -> List[str]:
    """The outputs of a result record: energy, forces, stress, then its scalar properties."""
    names = [name for name in ("energy", "forces", "stress") if name in record]
    return names + [name for name, value in record.get("properties", {}).items() if np.ndim(value) == 0]

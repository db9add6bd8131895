"""JSON files plain, gzipped or zipped, and the bookkeeping of skipped bad records."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from sciml.data.crystals.validation import CrystalInputError

PathLike = Union[str, os.PathLike]
logger = logging.getLogger("sciml.data.crystals")


def read_text(path: PathLike) -> str:
    """The text of ``path``: plain, ``.gz``, or a ``.zip`` holding one file (a ``.json`` member
    preferred).

    Raises:
        CrystalInputError: missing file, unreadable archive or undecodable text.
    """
    path = Path(path)
    if not path.is_file():
        raise CrystalInputError(f"{path}: no such file")
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        elif path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                json_names = [n for n in names if n.endswith(".json")]
                chosen = json_names or names
                if len(chosen) != 1:
                    raise CrystalInputError(f"{path}: expected one JSON file in the zip archive, found {names}")
                data = archive.read(chosen[0])
        else:
            data = path.read_bytes()
        return data.decode("utf-8")
    except (OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise CrystalInputError(f"{path}: cannot read ({type(err).__name__}: {err})") from None


def load_json(path: PathLike) -> Any:
    """The parsed JSON content of ``path`` (see :func:`read_text` for compression).

    Raises:
        CrystalInputError: unreadable file or invalid JSON (with line and column).
    """
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CrystalInputError(f"{path}: not valid JSON ({err})") from None


def dump_json(obj: Any, path: PathLike) -> None:
    """Write ``obj`` as JSON to ``path``: gzipped for ``.gz``, inside a zip archive (one member
    named after the file, without ``.zip``) for ``.zip``, else plain text."""
    path = Path(path)
    text = json.dumps(obj)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    elif path.name.endswith(".zip"):
        member = path.name[: -len(".zip")]
        member = member if member.endswith(".json") else member + ".json"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(member, text)
    else:
        path.write_text(text, encoding="utf-8")


def skip_or_raise(
    error: CrystalInputError, skip_bad: bool, skipped: Optional[List[Tuple[str, str]]], source: str
) -> None:
    """Raise ``error`` unless ``skip_bad``; then log it and append ``(source, message)`` to
    ``skipped`` when a list is given."""
    if not skip_bad:
        raise error
    logger.warning("skipping %s", error)
    if skipped is not None:
        skipped.append((source, str(error)))


def entry_records(
    entries: Sequence[Any],
    path: PathLike,
    id_key: str,
    parse: Callable[[Dict[str, Any], str], Tuple[Any, Dict[str, Any]]],
    skip_bad: bool,
    skipped: Optional[List[Tuple[str, str]]],
) -> List[Any]:
    """One record per JSON entry: ``parse(entry, source) -> (atoms, targets)`` for every entry that
    is an object; a bad entry raises its CrystalInputError naming the file and record id, or with
    ``skip_bad`` is skipped (see :func:`skip_or_raise`)."""
    from sciml.data.crystals.records import CrystalRecord
    from sciml.data.crystals.validation import CrystalInputError

    records = []
    for position, entry in enumerate(entries):
        record_id = str(entry.get(id_key, f"#{position}")) if isinstance(entry, dict) else f"#{position}"
        source = f"{path} (record {record_id})"
        try:
            if not isinstance(entry, dict):
                raise CrystalInputError(f"{source}: entry is a {type(entry).__name__}, not an object")
            atoms, values = parse(entry, source)
        except CrystalInputError as err:
            skip_or_raise(err, skip_bad, skipped, source)
            continue
        records.append(CrystalRecord(record_id, atoms, values))
    return records


def unknown_targets(entries: Sequence[Any], targets: Sequence[str]) -> List[str]:
    """The requested targets that no entry has (misspelt names)."""
    present = {name for entry in entries if isinstance(entry, dict) for name in entry}
    return [name for name in targets if name not in present]


def peek_text(path: PathLike, size: int = 1 << 16) -> str:
    """The first ``size`` characters of ``path`` (decompressed), or "" when unreadable."""
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                data = handle.read(size)
        elif path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(".json")] or archive.namelist()
                with archive.open(names[0]) as handle:
                    data = handle.read(size)
        else:
            with open(path, "rb") as handle:
                data = handle.read(size)
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="ignore").read()
    except (OSError, EOFError, zipfile.BadZipFile, IndexError):
        return ""


def json_head(path: Path) -> Optional[str]:
    """The start of a JSON dataset file (``.json``, ``.gz``, ``.zip``; not a CIF), stripped of
    leading blanks, or None for any other path (what the crystal formats' detection reads)."""
    from sciml.data.structure_files import structure_kind

    if not path.is_file() or structure_kind(path) == "cif" or not path.name.endswith((".json", ".gz", ".zip")):
        return None
    return peek_text(path).lstrip()


def is_matbench_head(head: str) -> bool:
    """A MatBench task file starts as a pandas split table: ``{"columns": ..., "data": ...}``."""
    return head.startswith("{") and '"columns"' in head and '"data"' in head


def is_jarvis_head(head: str) -> bool:
    """JARVIS entries carry ``jid`` and ``lattice_mat`` (and are no MatBench table)."""
    return '"jid"' in head and '"lattice_mat"' in head and not is_matbench_head(head)

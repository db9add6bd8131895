"""The structures of many files, indexed so that each can be read alone: the work list of batch inference.

:func:`index_structures` lists one :class:`StructureItem` per structure of each file, keyed by the
file's absolute path and the frame index; :func:`read_item` reads one item. POSCAR/CONTCAR files
and CIFs of one data block hold one structure and are not read while indexing (a CIF of several
blocks is read whole to count its structures); extxyz/xyz frames are located by byte offset, ase
databases (``.db``) by row id and ase trajectories (``.traj``) by frame, so one frame is read
without parsing the ones before it; any other ase-readable file (and any gzipped one) is read whole
to count its frames (and again, once per reading process, to read them). Files are read by
:func:`sciml.data.read_structures`, the reader of every command, chosen from the name in any case
and through ``.gz``; single frames of xyz files get the same checks. A file that a streamable
registered format detects (:mod:`sciml.data.formats`, e.g. a plugin's) is read whole by that
format's reader.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from sciml.data.formats import detect_format, get_format
from sciml.data.readers import check_structure_file, check_structures, read_structures
from sciml.data.structure_files import COINCIDENT_DISTANCE, check_no_overlap, cif_block_count, structure_kind


@dataclass(frozen=True)
class StructureItem:
    """One structure of one file.

    Attributes:
        file: the path as given. index: 0-based frame within the file. frames: frames in the file.
        kind: how the frame is read: ``single`` (a POSCAR, or a CIF of one data block), ``xyz``
            (``locator`` is the frame's byte range), ``db`` (``locator`` is the row id), ``traj``,
            ``any`` (the file read whole) or ``format`` (the file read whole by the registered
            format named by ``locator``).
        key: ``<absolute path>#<index>``, the item's name in the parts files.
        species: elements of a POSCAR without a species line (``--species``), else None.
    """

    file: str
    index: int
    frames: int
    kind: str
    key: str
    locator: Any = None
    species: Optional[Tuple[str, ...]] = None

    @property
    def where(self) -> str:
        """The item in messages: the file, and the frame when the file holds several."""
        return self.file if self.frames == 1 else f"{self.file}: frame {self.index}"


def index_structures(paths: Sequence[str], species: Optional[Sequence[str]] = None,
                     ) -> Tuple[List[StructureItem], List[str]]:
    """The structures of ``paths`` in order, and one message per file that cannot be indexed;
    ``species`` names the elements of POSCARs without a species line."""
    items: List[StructureItem] = []
    errors: List[str] = []
    species = tuple(species) if species is not None else None
    for path in map(str, paths):
        try:
            kind, locators = _index_file(path, species)
        except ValueError as err:
            errors.append(one_line(err, path))
            continue
        absolute = os.path.abspath(path)
        items += [StructureItem(path, k, len(locators), kind, f"{absolute}#{k}", locator, species)
                  for k, locator in enumerate(locators)]
    return items, errors


def _index_file(path: str, species: Optional[Tuple[str, ...]] = None) -> Tuple[str, list]:
    entry = detect_format(path, streamable=True)
    if entry is not None:
        return "format", [entry.name] * len(_read_whole(path, entry.name, species))
    suffix = Path(path).suffix.lower()
    kind = structure_kind(path)  # by name, any case, through .gz: the reader every command uses
    if kind == "vasp" or (kind == "cif" and cif_block_count(path) <= 1):
        return "single", [None]  # one structure, read by the workers
    check_structure_file(path)
    if suffix in (".xyz", ".extxyz"):
        return "xyz", _xyz_frame_ranges(path)
    try:
        if suffix == ".db":
            import ase.db

            with ase.db.connect(path) as db:
                ids = [row.id for row in db.select(columns=["id"], include_data=False)]
            if not ids:
                raise ValueError(f"{path}: contains no structures")
            return "db", ids
        if suffix == ".traj":
            from ase.io.trajectory import Trajectory

            trajectory = Trajectory(path)
            try:
                count = len(trajectory)
            finally:
                trajectory.close()
            if count == 0:
                raise ValueError(f"{path}: contains no structures")
            return "traj", [None] * count
    except ValueError:
        raise
    except Exception as err:  # sqlite3/ulm errors for a file that is not a database or trajectory
        raise ValueError(f"{path}: cannot read file ({type(err).__name__}: {first_line(err)})") from None
    return "any", [None] * len(_read_whole(path, None, species))


def _read_whole(path: str, format: Optional[str], species: Optional[Tuple[str, ...]]) -> list:
    """Every frame of a file, checked: read by the registered ``format`` (None: as a structure file)."""
    if format is None:
        return read_structures(path, energy_key=None, forces_key=None, stress_key=None, species=species)
    check_structure_file(path)
    frames = get_format(format).read(path)
    check_structures(frames, path, energy_key=None, forces_key=None, stress_key=None)
    return frames


def _xyz_frame_ranges(path: str) -> List[Tuple[int, int]]:
    """Byte range of every frame, scanned the way ase's extxyz reader finds frames: ase itself
    scans from the start of the file for every frame it is asked for."""
    ranges = []
    with open(path, "rb") as handle:
        while True:
            start = handle.tell()
            line = handle.readline()
            if line.strip() == b"":
                break
            try:
                natoms = int(line)
            except ValueError:
                raise ValueError(f"{path}: cannot read file (frame {len(ranges)}: expected an atom count, "
                                 f"got {line.strip()[:40].decode(errors='replace')!r})") from None
            for _ in range(natoms + 1):
                if not handle.readline():
                    raise ValueError(f"{path}: cannot read file (frame {len(ranges)} is cut short)")
            while True:  # up to three VEC lines of the cell follow the atoms
                position = handle.tell()
                if not handle.readline().lstrip().startswith(b"VEC"):
                    handle.seek(position)
                    break
            ranges.append((start, handle.tell()))
    if not ranges:
        raise ValueError(f"{path}: contains no structures")
    return ranges


def read_item(item: StructureItem, cache: Optional[dict] = None):
    """The checked ``ase.Atoms`` of ``item``; ValueError naming the file (and frame) if it is bad.

    ``cache`` (a dict kept by the caller) holds the last file read whole (``any`` and ``format`` kinds)."""
    if item.kind == "single":
        return read_structures(item.file, energy_key=None, forces_key=None, stress_key=None, species=item.species)[0]
    if item.kind in ("any", "format"):
        cache = {} if cache is None else cache
        if cache.get("file") != item.file:
            cache.clear()  # drop the last file before reading the next
            format = item.locator if item.kind == "format" else None
            cache.update(file=item.file, frames=_read_whole(item.file, format, item.species))
        if item.index >= len(cache["frames"]):
            raise ValueError(f"{item.where}: the file has changed since it was indexed; run again")
        return cache["frames"][item.index]
    try:
        atoms = _read_frame(item)
    except KeyError as err:
        raise ValueError(f"{item.where}: unknown element symbol {err.args[0] if err.args else ''!r}") from None
    except Exception as err:  # ase raises many types for malformed input
        raise ValueError(f"{item.where}: cannot read ({type(err).__name__}: {first_line(err)})") from None
    _check_atoms(atoms, item)
    return atoms


def _read_frame(item: StructureItem):
    import ase.io

    if item.kind == "xyz":
        start, end = item.locator
        with open(item.file, "rb") as handle:
            handle.seek(start)
            text = handle.read(end - start).decode()
        return ase.io.read(io.StringIO(text), format="extxyz", index=0)
    if item.kind == "db":
        import ase.db

        with ase.db.connect(item.file) as db:
            return db.get(id=item.locator).toatoms()
    if item.kind == "traj":
        from ase.io.trajectory import Trajectory

        trajectory = Trajectory(item.file)
        try:
            return trajectory[item.index]
        finally:
            trajectory.close()
    raise ValueError(f"unknown structure item kind {item.kind!r}")


def _check_atoms(atoms, item: StructureItem) -> None:
    try:
        check_structures([atoms], item.file, energy_key=None, forces_key=None, stress_key=None)
    except ValueError as err:  # it numbers the one frame it was given 0
        raise ValueError(str(err).replace(f"{item.file}: frame 0", item.where, 1)) from None
    check_no_overlap(atoms, item.where, COINCIDENT_DISTANCE)  # as read_structures checks frames of these formats


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type's name when it has none)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def one_line(err: BaseException, path: str) -> str:
    """The first line of ``err``, starting with ``path`` unless it names it already."""
    reason = first_line(err)
    return reason if path in reason else f"{path}: {reason}"

"""Batch inference over many structure files and databases: parallel reading, ranks, resumable output.

The work is a list of :class:`StructureItem`, one per structure of each file, keyed by the file's
absolute path and the frame index (:func:`index_structures`). :class:`StructureDataset` reads an
item and builds its graph as the model declares (``GraphSpec.of(model)``), so the workers of a
``DataLoader`` do the file reading and neighbour search while the main process runs the model
(:func:`iter_predictions`).

:func:`predict_to_file` is ``sciml predict --output OUTPUT``. Each rank of a ``torchrun`` job (one
rank without it, see :mod:`sciml.distributed`) predicts its share of the structures not yet done
and appends one JSON line per structure to ``OUTPUT.parts/rank-<r>.jsonl``, flushed and fsynced
after every batch, so a killed job loses at most the batch in flight. Run again, it skips every
key already in any part file, whatever the number of ranks then and now; a line cut short by the
kill is ignored and its structure predicted again. When every rank is done, rank 0 merges the
parts in input order into OUTPUT (csv, json or extxyz, written atomically) and removes the parts
folder. ``force`` deletes an existing parts folder and starts from scratch. Ranks on several
nodes need OUTPUT on a file system they all share: rank 0 reads the other ranks' part files, and
waits for their ``rank-<r>.done`` markers rather than for a collective, which would time out
when ranks finish far apart.

Part lines::

    {"key": str, "file": str, "index": int, "formula": str, "atoms": int,
     "energy": eV, "energies": (n,) eV, "forces": (n, 3) eV/Å,
     "stress": (3, 3) eV/Å^3,                                          # each when the model gives it
     "properties": {name: float or nested list}}                      # other per-structure outputs
    {"key": str, "file": str, "index": int, "error": str}             # a structure that failed

A structure that cannot be read, turned into a graph or predicted is recorded as an error line
and listed when the job ends; a resume does not try it again unless ``retry_errors`` is set. A
file that cannot be opened or indexed at all is indexed again (and listed) on every run.
``OUTPUT.parts/job.json`` holds the caller's job description (``sciml predict``: the checkpoint's
SHA-256); a resume under another description is refused.

Files are indexed once, on rank 0: POSCAR/CONTCAR files and CIFs of one data block hold one
structure and are only read by the workers (a CIF of several blocks is read whole to count its
structures); extxyz/xyz frames are located by byte offset, ase databases (``.db``) by row id and
ase trajectories (``.traj``) by frame, so a worker reads one frame without parsing the ones before
it; any other ase-readable file (and any gzipped one) is read whole to count its frames (and
again, once per worker, to predict them). Files are read by :func:`sciml.data.read_structures`,
the reader of every command, chosen from the name in any case and through ``.gz``; single frames
of xyz files get the same checks.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from sciml.data.readers import check_structure_file
from sciml.distributed import DistributedContext
from sciml.graph import AtomicGraph, GraphSpec
from sciml.inference import PER_ATOM, model_dtype, per_structure_outputs, predict_batches
from sciml.models.domain import ModelDomain
from sciml.threads import adapt_threads

OUTPUT_FORMATS = ("csv", "json", "extxyz", "xyz")
PREFIX = "sciml_"  # extxyz keys of predictions, like MACE's "MACE_energy"
EV_PER_A3_IN_GPA = 160.21766208


# ----------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class StructureItem:
    """One structure of one file.

    Attributes:
        file: the path as given. index: 0-based frame within the file. frames: frames in the file.
        kind: how the frame is read: ``single`` (a POSCAR, or a CIF of one data block), ``xyz``
            (``locator`` is the frame's byte range), ``db`` (``locator`` is the row id), ``traj``
            or ``any``.
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
            errors.append(_one_line(err, path))
            continue
        absolute = os.path.abspath(path)
        items += [StructureItem(path, k, len(locators), kind, f"{absolute}#{k}", locator, species)
                  for k, locator in enumerate(locators)]
    return items, errors


def _index_file(path: str, species: Optional[Tuple[str, ...]] = None) -> Tuple[str, list]:
    from sciml.data.readers import read_structures
    from sciml.data.structure_files import cif_block_count, structure_kind

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
        raise ValueError(f"{path}: cannot read file ({type(err).__name__}: {_first_line(err)})") from None
    frames = read_structures(path, energy_key=None, forces_key=None, stress_key=None, species=species)
    return "any", [None] * len(frames)


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

    ``cache`` (a dict kept by the caller) holds the last ``any``-kind file read whole."""
    from sciml.data.readers import read_structures

    if item.kind == "single":
        return read_structures(item.file, energy_key=None, forces_key=None, stress_key=None, species=item.species)[0]
    if item.kind == "any":
        cache = {} if cache is None else cache
        if cache.get("file") != item.file:
            cache.clear()  # drop the last file before reading the next
            cache.update(file=item.file, frames=read_structures(item.file, energy_key=None, forces_key=None,
                                                                stress_key=None, species=item.species))
        if item.index >= len(cache["frames"]):
            raise ValueError(f"{item.where}: the file has changed since it was indexed; run again")
        return cache["frames"][item.index]
    try:
        atoms = _read_frame(item)
    except KeyError as err:
        raise ValueError(f"{item.where}: unknown element symbol {err.args[0] if err.args else ''!r}") from None
    except Exception as err:  # ase raises many types for malformed input
        raise ValueError(f"{item.where}: cannot read ({type(err).__name__}: {_first_line(err)})") from None
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
    from sciml.data.readers import check_structures
    from sciml.data.structure_files import COINCIDENT_DISTANCE, check_no_overlap

    try:
        check_structures([atoms], item.file, energy_key=None, forces_key=None, stress_key=None)
    except ValueError as err:  # it numbers the one frame it was given 0
        raise ValueError(str(err).replace(f"{item.file}: frame 0", item.where, 1)) from None
    check_no_overlap(atoms, item.where, COINCIDENT_DISTANCE)  # as read_structures checks frames of these formats


# ----------------------------------------------------------------------------------- dataset
class StructureDataset(torch.utils.data.Dataset):
    """Items to graphs: ``dataset[n]`` is a dict with ``n``, ``formula``, ``atoms`` and ``graph``
    (a one-structure :class:`AtomicGraph` built as ``spec`` says, in ``dtype``, without labels),
    or with ``n`` and ``error`` (a one-line message) for a structure that cannot be used, such as
    one with elements outside the model's ``domain`` (unless ``allow_unknown_elements``)."""

    def __init__(self, items: Sequence[StructureItem], spec: GraphSpec, dtype: torch.dtype = torch.float32,
                 domain: Optional[ModelDomain] = None, allow_unknown_elements: bool = False):
        self.items, self.spec, self.dtype = list(items), spec, dtype
        self.domain, self.allow_unknown_elements = domain, allow_unknown_elements
        self._cache: dict = {}  # per process: each DataLoader worker has its own copy

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, n: int) -> dict:
        item = self.items[n]
        try:
            atoms = read_item(item, self._cache)
            where = f"{item.where} ({atoms.get_chemical_formula()})"
            if self.domain is not None:
                self.domain.check_elements(atoms.numbers, where, allow=self.allow_unknown_elements)
            try:  # labels in the file are not needed and could differ between structures of a batch
                graph = AtomicGraph.from_ase(atoms, self.spec, dtype=self.dtype, energy_key=None, forces_key=None,
                                             stress_key=None)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            graph.require_neighbors(where)
        except (ValueError, OSError) as err:
            return {"n": n, "error": _one_line(err, item.file)}
        return {"n": n, "formula": atoms.get_chemical_formula(), "atoms": len(atoms), "graph": graph}


def collate_structures(samples: List[dict]) -> Tuple[List[dict], Optional[AtomicGraph]]:
    """DataLoader ``collate_fn``: the samples without their graphs, and those graphs as one batch
    (None when no sample has a graph). Graphs that cannot be batched together stay in their samples."""
    graphs = [s["graph"] for s in samples if "graph" in s]
    if not graphs:
        return samples, None
    try:
        batch = AtomicGraph.collate(graphs)
    except ValueError:
        return samples, None
    return [{k: v for k, v in s.items() if k != "graph"} for s in samples], batch


def iter_predictions(
    model: torch.nn.Module,
    items: Sequence[StructureItem],
    batch_size: int = 32,
    workers: int = 0,
    device: "str | torch.device | None" = None,
    allow_unknown_elements: bool = False,
) -> Iterator[List[dict]]:
    """Predict ``items`` in order, ``batch_size`` at a time, reading and building graphs in
    ``workers`` DataLoader processes (0: in this one). Yields each batch's records (see the
    module docstring: a result or an error per item). A batch the model rejects (ValueError,
    IndexError) is predicted again one structure at a time, so only the bad ones fail.
    Structures with elements outside the model's domain are errors unless
    ``allow_unknown_elements``. A float32 model's numbers are written to float32 precision (its
    shortest decimals), a float64 model's in full."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    domain = model.domain
    stress_doubt = domain.stress_warning() if domain is not None else None
    dataset = StructureDataset(items, GraphSpec.of(model), model_dtype(model), domain, allow_unknown_elements)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate_structures)
    for samples, batch in loader:
        adapt_threads()
        good = [s for s in samples if "error" not in s]
        graphs = [s.pop("graph") for s in good] if batch is None else None
        outputs: List[Any] = []
        if batch is not None:
            try:
                outputs = _predict_batch(model, batch, device)
            except (ValueError, IndexError):
                graphs = batch.split()
        if graphs is not None:
            outputs = []
            for graph, sample in zip(graphs, good):
                try:
                    outputs += _predict_batch(model, graph, device)
                except (ValueError, IndexError) as err:
                    outputs.append(f"{items[sample['n']].where}: the model failed: {_first_line(err)}")
        if stress_doubt is not None and any("stress" in row for row in outputs if isinstance(row, dict)):
            warnings.warn(stress_doubt, stacklevel=2)
            stress_doubt = None  # once
        rows = iter(outputs)
        records = []
        for sample in samples:
            item = items[sample["n"]]
            head = {"key": item.key, "file": item.file, "index": item.index}
            row = sample["error"] if "error" in sample else next(rows)
            if isinstance(row, str):
                records.append({**head, "error": row})
            else:
                records.append({**head, "formula": sample["formula"], "atoms": sample["atoms"], **row})
        yield records


def _predict_batch(model: torch.nn.Module, batch: AtomicGraph, device) -> List[dict]:
    """Per-structure outputs as :func:`sciml.inference.predict` gives them, as floats and lists
    (rounded to float32's shortest decimals for a float32 model)."""
    rows: List[dict] = []
    float32 = model_dtype(model) == torch.float32
    for on_device, out in predict_batches(model, [batch], batch_size=1, device=device):
        for outputs in per_structure_outputs(on_device, out):
            row: Dict[str, Any] = {}
            properties: Dict[str, Any] = {}
            for key, value in outputs.items():
                plain = _plain(value, float32, scalar=key not in PER_ATOM and key != "stress" and value.numel() == 1)
                (row if key in ("energy", "stress") or key in PER_ATOM else properties)[key] = plain
            if properties:
                row["properties"] = properties
            rows.append(row)
    return rows


def predict_structures(
    model: torch.nn.Module,
    paths: Sequence[str],
    batch_size: int = 32,
    workers: int = 0,
    device: "str | torch.device | None" = None,
    allow_unknown_elements: bool = False,
    species: Optional[Sequence[str]] = None,
) -> Tuple[List[dict], List[str]]:
    """Predict every structure of ``paths`` in memory (no parts files): the result records in
    input order, and the messages of the files that could not be indexed and then of the
    structures skipped, in input order. ``species``: elements of POSCARs without a species line.

    Raises:
        ValueError: no structure could be predicted.
    """
    items, errors = index_structures(paths, species)
    results = []
    for records in iter_predictions(model, items, batch_size, workers, device, allow_unknown_elements):
        for record in records:
            if "error" in record:
                errors.append(record["error"])
            else:
                results.append(record)
    if not results:
        raise nothing_predicted(errors)
    return results, errors


def nothing_predicted(errors: Sequence[str]) -> ValueError:
    if len(errors) == 1:
        return ValueError(errors[0])
    return ValueError("no structure could be predicted; bad files: " + "; ".join(errors))


# ----------------------------------------------------------------------------------- parts
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


# ----------------------------------------------------------------------------------- the job
@dataclass
class PredictionSummary:
    """``predicted``: structures written to the output; ``skipped``: one message per file that
    could not be indexed, then per structure left out, in input order; ``resumed``: structures
    found done in the parts when the run started."""

    predicted: int
    skipped: List[str]
    resumed: int


@dataclass
class _Plan:
    items: List[StructureItem]
    file_errors: List[str]
    pending: List[int]
    done: int


def output_format(output: "str | os.PathLike") -> str:
    """``csv``, ``json`` or ``extxyz`` from the file name; ValueError for anything else."""
    kind = Path(output).suffix.lower().lstrip(".")
    if kind not in OUTPUT_FORMATS:
        raise ValueError(f"--output must end in .csv, .json or .extxyz, got {Path(output).name}")
    return "extxyz" if kind == "xyz" else kind


def file_sha256(path: "str | os.PathLike") -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predict_to_file(
    model: torch.nn.Module,
    paths: Sequence[str],
    output: "str | os.PathLike",
    ctx: Optional[DistributedContext] = None,
    batch_size: int = 32,
    workers: int = 0,
    device: "str | torch.device | None" = None,
    force: bool = False,
    retry_errors: bool = False,
    job: Optional[dict] = None,
    on_batch: Optional[Callable[[int], None]] = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    poll_s: float = 0.5,
    allow_unknown_elements: bool = False,
    species: Optional[Sequence[str]] = None,
) -> Optional[PredictionSummary]:
    """Predict every structure of ``paths`` into ``output``, resumably (see the module docstring).

    Args:
        ctx: this process's rank (:func:`sciml.distributed.setup`); None: a one-process job.
        force: delete ``OUTPUT.parts`` and start from scratch (overwriting ``output`` is the
            caller's decision).
        retry_errors: predict again the structures recorded as errors.
        job: JSON-able description the parts must have been made under (e.g. the checkpoint hash).
        on_batch: called with the number of batches this rank has written (progress, tests).
        log: where progress lines go (rank 0 only).
        poll_s: seconds between rank 0's looks for the other ranks' "done" markers.
        allow_unknown_elements: predict structures with elements outside the model's domain.
        species: elements of POSCARs without a species line, in the order of their counts.

    Returns:
        The summary on rank 0, None on the others.

    Raises:
        ValueError: bad ``output`` name, parts of another job, or no structure could be predicted.
    """
    ctx = ctx or DistributedContext()
    output = Path(output)
    kind = output_format(output)
    parts = PredictionParts(output)
    plan: Any = None
    if ctx.is_main:
        try:
            plan = _plan(paths, parts, force, retry_errors, job, species)
        except ValueError as err:
            plan = str(err)
    plan = ctx.broadcast(plan)
    if isinstance(plan, str):
        raise ValueError(plan)
    if ctx.is_main and plan.done:
        log(f"resuming: {plan.done} of {len(plan.items)} structures already predicted")
    mine = _share(plan.pending, batch_size, ctx.rank, ctx.world_size)
    if mine:
        from tqdm.auto import tqdm

        items = [plan.items[p] for p in mine]
        progress = tqdm(total=len(items), desc="predicting", unit="structure", disable=None if ctx.is_main else True)
        with PartWriter(parts.part(ctx.rank)) as writer, progress:
            for number, records in enumerate(iter_predictions(model, items, batch_size, workers, device,
                                                                  allow_unknown_elements), 1):
                writer.write(records)
                progress.update(len(records))
                if on_batch is not None:
                    on_batch(number)
    if not ctx.is_main:
        # a marker, not a collective: ranks may finish far apart, longer than any collective timeout
        (parts.path / f"rank-{ctx.rank}.done").touch()
        return None
    _wait_for_ranks(parts, ctx.world_size, poll_s)
    return _merge(plan, parts, output, kind)


def _plan(paths, parts: PredictionParts, force: bool, retry_errors: bool, job, species=None) -> _Plan:
    if force and parts.path.exists():
        shutil.rmtree(parts.path)
    items, file_errors = index_structures(paths, species)
    parts.check_job(job)
    parts.path.mkdir(parents=True, exist_ok=True)
    for marker in parts.path.glob("rank-*.done"):  # of an earlier run
        marker.unlink()
    index = parts.scan({item.key for item in items})
    parts.repair(index)
    done = index.done(retry_errors)
    pending = [n for n, item in enumerate(items) if item.key not in done]
    return _Plan(items, file_errors, pending, len(items) - len(pending))


def _share(pending: List[int], batch_size: int, rank: int, world_size: int) -> List[int]:
    """Rank ``rank``'s items: whole batches dealt round-robin (neighbouring frames stay together)."""
    return [p for n, p in enumerate(pending) if (n // batch_size) % world_size == rank]


def _wait_for_ranks(parts: PredictionParts, world_size: int, poll_s: float) -> None:
    """Wait until ranks 1.. have left their markers (a rank that dies takes torchrun's job down)."""
    markers = [parts.path / f"rank-{r}.done" for r in range(1, world_size)]
    while not all(m.exists() for m in markers):
        time.sleep(poll_s)


def _merge(plan: _Plan, parts: PredictionParts, output: Path, kind: str) -> PredictionSummary:
    index = parts.scan({item.key for item in plan.items})
    missing = [item for item in plan.items if item.key not in index.results and item.key not in index.errors]
    if missing:
        raise ValueError(f"{len(missing)} structures have no prediction in {parts.path} (first: {missing[0].where}); "
                         f"run the same command again to finish them")
    skipped = plan.file_errors + [index.errors[item.key] for item in plan.items if item.key not in index.results]
    done = [item for item in plan.items if item.key in index.results]
    if not done:
        shutil.rmtree(parts.path)
        raise nothing_predicted(skipped)
    write_predictions(output, kind, done, parts.records(index, (item.key for item in done)), list(index.fields))
    shutil.rmtree(parts.path)
    return PredictionSummary(len(done), skipped, plan.done)


# ----------------------------------------------------------------------------------- outputs
def summary_row(record: dict) -> dict:
    """The table/csv row of a result record: file, index, formula, atoms, energy (eV, and per
    atom), largest force (eV/Å), pressure (GPa) and scalar properties, each when predicted."""
    out = {"file": str(Path(record["file"])), "index": record["index"], "formula": record["formula"],
           "atoms": record["atoms"]}
    if "energy" in record:
        out["energy_eV"] = record["energy"]
        out["energy_per_atom_eV"] = record["energy"] / record["atoms"]
    if "forces" in record:
        out["max_force_eV_per_A"] = float(np.linalg.norm(np.asarray(record["forces"]), axis=1).max())
    if "stress" in record:
        out["pressure_GPa"] = float(-np.trace(np.asarray(record["stress"])) / 3 * EV_PER_A3_IN_GPA)
    for key, value in record.get("properties", {}).items():
        if np.ndim(value) == 0:
            out[key] = value
    return out


def summary_columns(fields: Sequence[str]) -> List[str]:
    """The summary columns of records whose outputs are ``fields`` (see :func:`output_fields`)."""
    columns = ["file", "index", "formula", "atoms"]
    named = {"energy": ["energy_eV", "energy_per_atom_eV"], "forces": ["max_force_eV_per_A"],
             "stress": ["pressure_GPa"]}
    for name in ("energy", "forces", "stress"):
        columns += named[name] if name in fields else []
    return columns + [name for name in fields if name not in named]


def write_predictions(output: Path, kind: str, items: Sequence[StructureItem], records: Iterable[dict],
                      fields: Sequence[str]) -> None:
    """Write ``records`` (results of ``items``, same order) to ``output`` atomically, streaming:
    csv (summary rows), json (summary rows with energies_eV per atom, forces_eV_per_A and
    stress_eV_per_A3) or extxyz (each structure read again from its file, with ``sciml_<output>``
    arrays: energies, forces; and info: energy, stress, properties)."""
    from sciml.io.files import atomic_path

    with atomic_path(output) as tmp, open(tmp, "w", newline="") as handle:
        if kind == "csv":
            writer = csv.DictWriter(handle, fieldnames=summary_columns(fields), restval="")
            writer.writeheader()
            writer.writerows(summary_row(record) for record in records)
        elif kind == "json":
            handle.write("[")
            for number, record in enumerate(records):
                row = summary_row(record)
                if "energies" in record:
                    row["energies_eV"] = record["energies"]
                if "forces" in record:
                    row["forces_eV_per_A"] = record["forces"]
                if "stress" in record:
                    row["stress_eV_per_A3"] = record["stress"]
                handle.write(("," if number else "") + "\n " + json.dumps(row, indent=1).replace("\n", "\n "))
            handle.write("\n]\n")
        else:
            from ase.io import write

            cache: dict = {}
            for item, record in zip(items, records):
                write(handle, _with_predictions(read_item(item, cache), item, record), format="extxyz")


def _with_predictions(atoms, item: StructureItem, record: dict):
    if len(atoms) != record["atoms"]:
        raise ValueError(f"{item.where} has changed since it was predicted; pass --force to start over")
    atoms.calc = None
    for key in ("energy", "energies", "forces", "stress"):
        if key in record:
            value = np.asarray(record[key], dtype=float)
            if key in PER_ATOM:
                atoms.arrays[PREFIX + key] = value
            else:
                atoms.info[PREFIX + key] = value.reshape(-1) if key == "stress" else float(value)
    for key, value in record.get("properties", {}).items():
        atoms.info[PREFIX + key] = value if np.ndim(value) == 0 else np.asarray(value)
    return atoms


def _plain(value: torch.Tensor, float32: bool, scalar: bool) -> "float | list":
    """``value`` (CPU) as a float or nested list; with ``float32``, each number is the float whose
    repr is the shortest decimal reading back as its float32 value (a float32 model's
    -12.345677375793457 is written -12.345677; numpy prints float32 that way)."""
    array = value.numpy()
    if float32:
        array = array.astype(np.float32).astype(str).astype(np.float64)
    return float(array.reshape(-1)[0]) if scalar else array.tolist()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _one_line(err: BaseException, path: str) -> str:
    """The first line of ``err``, starting with ``path`` unless it names it already."""
    reason = _first_line(err)
    return reason if path in reason else f"{path}: {reason}"

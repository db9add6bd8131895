"""Batch inference over many structure files and databases: parallel reading, ranks, resumable output.

The work is a list of :class:`~sciml.data.structure_index.StructureItem`, one per structure of
each file, keyed by the file's absolute path and the frame index
(:func:`~sciml.data.structure_index.index_structures`, which says how each kind of file is
indexed and read). :class:`StructureDataset` reads an item and builds its graph as the model
declares (``GraphSpec.of(model)``), so the workers of a ``DataLoader`` do the file reading and
neighbour search while the main process runs the model (:func:`iter_predictions`).

:func:`predict_to_file` is ``sciml predict --output OUTPUT``. Files are indexed once, on rank 0.
Each rank of a ``torchrun`` job (one rank without it, see :mod:`sciml.distributed`) predicts its
share of the structures not yet done and appends its results to the journal ``OUTPUT.parts``
(:mod:`sciml.batch_journal`: one JSON line per structure, resumable after a kill, whatever the
number of ranks then and now). When every rank is done, rank 0 merges the parts in input order
into OUTPUT (csv, json or extxyz, written atomically by :mod:`sciml.prediction_writers`) and
removes the parts folder. ``force`` deletes an existing parts folder and starts from scratch.
Ranks on several nodes need OUTPUT on a file system they all share: rank 0 reads the other ranks'
part files, and waits for their ``rank-<r>.done`` markers rather than for a collective, which
would time out when ranks finish far apart.

A structure that cannot be read, turned into a graph or predicted is recorded as an error line
and listed when the job ends; a resume does not try it again unless ``retry_errors`` is set. A
file that cannot be opened or indexed at all is indexed again (and listed) on every run.
``OUTPUT.parts/job.json`` holds the caller's job description (``sciml predict``: the checkpoint's
SHA-256); a resume under another description is refused.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from sciml.batch_journal import PartWriter, PredictionParts
from sciml.data.structure_index import StructureItem, first_line, index_structures, one_line, read_item
from sciml.distributed import DistributedContext
from sciml.graph import AtomicGraph, GraphSpec
from sciml.inference import PER_ATOM, model_dtype, per_structure_outputs, predict_batches
from sciml.models.domain import ModelDomain
from sciml.prediction_writers import output_format, write_predictions
from sciml.threads import adapt_threads


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
            return {"n": n, "error": one_line(err, item.file)}
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
                    outputs.append(f"{items[sample['n']].where}: the model failed: {first_line(err)}")
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


def _plain(value: torch.Tensor, float32: bool, scalar: bool) -> "float | list":
    """``value`` (CPU) as a float or nested list; with ``float32``, each number is the float whose
    repr is the shortest decimal reading back as its float32 value (a float32 model's
    -12.345677375793457 is written -12.345677; numpy prints float32 that way)."""
    array = value.numpy()
    if float32:
        array = array.astype(np.float32).astype(str).astype(np.float64)
    return float(array.reshape(-1)[0]) if scalar else array.tolist()

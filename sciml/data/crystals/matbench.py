"""MatBench v0.1 task files and its official five-fold cross-validation.

A task file (``matbench_mp_e_form.json.gz``, as matminer distributes it) is a pandas
``orient="split"`` JSON, optionally gzipped::

    {"index": [0, 1, ...],
     "columns": ["structure", "e_form"],
     "data": [[{"@module": "pymatgen.core.structure", "@class": "Structure", "lattice": ...,
                "sites": [...]}, -0.52], ...]}

``structure`` holds monty-encoded pymatgen ``Structure`` dictionaries and the other column the
target (``e_form`` eV/atom, ``gap pbe`` eV, ``exfoliation_en`` meV/atom, ``log10(K_VRH)``, ...;
booleans for the ``is_metal`` classification tasks, read as 0.0 / 1.0).

MatBench names entries ``mb-<task suffix>-<i + 1>``: the task name with ``matbench`` replaced by
``mb`` and ``_`` by ``-``, and the 1-based row number zero-padded to the number of digits of the
dataset size (``mb-mp-e-form-000001`` of 132,752 entries, ``mb-jdft2d-001`` of 636, as
``matbench.data_ops.load`` builds them).

The folds of the regression tasks are scikit-learn's
``KFold(n_splits=5, shuffle=True, random_state=18012019)`` over the rows, reproduced by
:func:`matbench_folds` without scikit-learn. The three classification tasks
(``matbench_expt_is_metal``, ``matbench_glass``, ``matbench_mp_is_metal``) were split with a
label-stratified K-fold instead; use :func:`official_matbench_folds` for them (and for any task
when the ``matbench`` package is installed).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sciml.data.crystals._io import PathLike, dump_json, is_matbench_head, json_head, load_json, skip_or_raise
from sciml.data.crystals._pymatgen import ase_to_structure_dict, structure_dict_to_ase
from sciml.data.crystals.records import CrystalRecord, as_target
from sciml.data.crystals.validation import CrystalInputError, check_crystal
from sciml.data.formats import CRYSTALS, DataFormat, register_format

#: MatBench's cross-validation: ``KFold(n_splits=5, shuffle=True, random_state=18012019)``.
MATBENCH_N_SPLITS = 5
MATBENCH_RANDOM_STATE = 18012019
#: Tasks whose official folds are label-stratified, so :func:`matbench_folds` does not give them.
MATBENCH_STRATIFIED_TASKS = ("matbench_expt_is_metal", "matbench_glass", "matbench_mp_is_metal")
_VALIDATION_FILE = "matbench_v0.1_validation.json"


def matbench_ids(task: str, num_entries: int) -> List[str]:
    """MatBench's entry ids ``mb-<suffix>-NNN`` for the rows of ``task``, in dataset order.

    Example: ``matbench_ids("matbench_jdft2d", 636)[0] == "mb-jdft2d-001"``.
    """
    prefix, width = _id_format(task, num_entries)
    return [f"{prefix}-{i + 1:0{width}d}" for i in range(num_entries)]


def _id_format(task: str, num_entries: int) -> Tuple[str, int]:
    # the width is floor(log10(n)) + 1, as matbench.data_ops.load computes it
    return task.replace("matbench", "mb").replace("_", "-"), len(str(num_entries))


def read_matbench(
    path: PathLike,
    task: Optional[str] = None,
    skip_bad: bool = False,
    skipped: Optional[List[Tuple[str, str]]] = None,
) -> Tuple[str, List[CrystalRecord]]:
    """Read a MatBench task file (layout in the module docstring).

    Args:
        path: ``*.json`` or ``*.json.gz`` in pandas ``split`` orientation.
        task: the task name (``"matbench_mp_e_form"``); when given, ids are MatBench's
            ``mb-mp-e-form-000001`` (numbered by the file's integer index + 1, as MatBench
            does), else the file's index values as strings.
        skip_bad: skip rows that fail the structure checks instead of raising.
        skipped: when given, ``(source, reason)`` is appended for every skipped row.

    Returns:
        ``(target_name, records)``: the target column's name and one record per row (file order)
        with ``targets == {target_name: value}``.

    Raises:
        CrystalInputError: not a split-oriented table with a ``structure`` column and exactly one
            other column, or (unless ``skip_bad``) a row whose structure is invalid; the message
            names the file and the row id.
    """
    table = load_json(path)
    if not isinstance(table, dict) or "columns" not in table or "data" not in table:
        raise CrystalInputError(f"{path}: expected a pandas 'split' JSON object with 'columns' and 'data'")
    columns = list(table["columns"])
    if "structure" not in columns:
        hint = " (a composition task: only structure tasks are supported)" if "composition" in columns else ""
        raise CrystalInputError(f"{path}: no 'structure' column (columns: {columns}){hint}")
    others = [c for c in columns if c != "structure"]
    if len(others) != 1:
        raise CrystalInputError(f"{path}: expected one target column besides 'structure', got {others}")
    target = others[0]
    s_col, t_col = columns.index("structure"), columns.index(target)
    rows = table["data"]
    index = table.get("index", list(range(len(rows))))
    if len(index) != len(rows):
        raise CrystalInputError(f"{path}: {len(index)} index values for {len(rows)} rows")
    if task is not None:
        prefix, width = _id_format(task, len(rows))
        ids = [f"{prefix}-{i + 1:0{width}d}" if isinstance(i, int) else str(i) for i in index]
    else:
        ids = [str(i) for i in index]
    records = []
    for record_id, row in zip(ids, rows):
        source = f"{path} (record {record_id})"
        try:
            atoms = check_crystal(structure_dict_to_ase(row[s_col], source), source)
            try:
                value = as_target(row[t_col])
            except ValueError as err:
                raise CrystalInputError(f"{source}: target {target!r}: {err}") from None
        except CrystalInputError as err:
            skip_or_raise(err, skip_bad, skipped, source)
            continue
        records.append(CrystalRecord(record_id, atoms, {target: value}))
    return target, records


def write_matbench(records: Sequence[CrystalRecord], path: PathLike, target: str) -> None:
    """Write records as a MatBench task file: pandas ``split`` JSON with columns
    ``["structure", target]``, index 0..n-1, structures as ``Structure.as_dict()``; missing
    targets are written as null. Gzipped when ``path`` ends with ``.gz``."""
    table = {
        "index": list(range(len(records))),
        "columns": ["structure", target],
        "data": [[ase_to_structure_dict(r.atoms), r.targets.get(target)] for r in records],
    }
    dump_json(table, path)


def matbench_folds(
    num_entries: int, n_splits: int = MATBENCH_N_SPLITS, random_state: int = MATBENCH_RANDOM_STATE
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's ``KFold(n_splits, shuffle=True, random_state).split`` over ``num_entries``
    rows, without scikit-learn: MatBench's folds for its regression tasks.

    ``np.arange(n)`` is shuffled by ``np.random.RandomState(random_state).shuffle``; the first
    ``n % n_splits`` folds take ``n // n_splits + 1`` consecutive shuffled indices as test set,
    the others ``n // n_splits``; each fold's train set is every other index.

    Returns:
        ``n_splits`` pairs ``(train_idx, test_idx)`` of int64 row indices, both sorted ascending
        (as ``KFold.split`` returns them).

    Raises:
        ValueError: ``n_splits < 2`` or more folds than entries.
    """
    if n_splits < 2 or n_splits > num_entries:
        raise ValueError(f"need 2 <= n_splits <= num_entries, got n_splits={n_splits}, num_entries={num_entries}")
    order = np.arange(num_entries)
    np.random.RandomState(random_state).shuffle(order)
    sizes = np.full(n_splits, num_entries // n_splits, dtype=np.int64)
    sizes[: num_entries % n_splits] += 1
    folds = []
    start = 0
    for size in sizes:
        in_test = np.zeros(num_entries, dtype=bool)
        in_test[order[start : start + size]] = True
        start += size
        folds.append((np.flatnonzero(~in_test).astype(np.int64), np.flatnonzero(in_test).astype(np.int64)))
    return folds


def official_matbench_folds(task: str) -> List[Tuple[List[str], List[str]]]:
    """MatBench v0.1's official folds of ``task`` as ``(train_ids, test_ids)`` per fold, read from
    ``matbench_v0.1_validation.json`` of the installed ``matbench`` package (not imported, so
    its heavy dependencies need not be installed).

    Raises:
        ImportError: the ``matbench`` package is not installed.
        KeyError: ``task`` is not a MatBench v0.1 task (the message lists them).
    """
    splits = _validation_file()["splits"]
    if task not in splits:
        raise KeyError(f"unknown MatBench task {task!r}; tasks: {', '.join(sorted(splits))}")
    folds = splits[task]
    return [(list(folds[k]["train"]), list(folds[k]["test"])) for k in sorted(folds, key=lambda k: int(k.split("_")[1]))]


def _validation_file() -> Dict[str, Any]:
    spec = importlib.util.find_spec("matbench")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / _VALIDATION_FILE
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise ImportError(
        f"official MatBench folds need the 'matbench' package ({_VALIDATION_FILE}); install it with "
        "'pip install matbench' (or 'pip install --no-deps matbench' for the split file only)"
    )


def read_matbench_records(path: PathLike, **options: Any) -> List[CrystalRecord]:
    """The records of a MatBench task file (:func:`read_matbench` without the target name)."""
    return read_matbench(path, **options)[1]


def is_matbench_file(path: Path) -> bool:
    """A JSON file (plain or ``.gz``) holding a pandas split table (``"columns"`` and ``"data"``)."""
    head = json_head(path)
    return head is not None and is_matbench_head(head)


register_format(DataFormat(name="matbench", kind=CRYSTALS, read=read_matbench_records, detect=is_matbench_file,
                           description="a MatBench task file (pandas split JSON, plain or .gz)"))

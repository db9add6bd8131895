"""Train/validation/test splits: seeded random, fixed index ranges, the ALIGNN/ComFormer and
MatBench benchmark splits, and split files that make them reproducible.

Every split is ``{"train": [...], "valid": [...], "test": [...]}`` of int indices into the
dataset (0-based, in the dataset's order).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

PathLike = Union[str, os.PathLike]
SPLIT_NAMES = ("train", "valid", "test")
# ALIGNN writes ids_train_val_test.json with these keys; load_split reads both layouts.
_ALIGNN_KEYS = {"id_train": "train", "id_val": "valid", "id_test": "test"}


def random_split(total: int, train: "int | float | None", valid: "int | float", test: "int | float", seed: int,
                 what: str, need_valid: bool = True) -> Dict[str, List[int]]:
    """Seeded random split of ``total`` structures (``torch.randperm``): a float size is a fraction
    of ``total``, an int a count; ``train`` None takes the rest. ``what`` names the structures in
    errors.

    Raises:
        ValueError: the sizes do not fit ``total``, or leave train (or, with ``need_valid``, valid) empty.
    """
    def size(value: "int | float") -> int:
        return int(value) if isinstance(value, int) else int(round(value * total))

    valid, test = size(valid), size(test)
    train = total - valid - test if train is None else size(train)
    if (need_valid and valid < 1) or train < 1 or train + valid + test > total:
        raise ValueError(f"split train={train}, valid={valid}, test={test} does not fit {what} "
                         f"(train and valid need at least one each)")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    return {"valid": order[:valid], "test": order[valid:valid + test], "train": order[valid + test:valid + test + train]}


def range_split(total: int, ranges: Mapping[str, Sequence[int]], what: str) -> Dict[str, List[int]]:
    """The fixed, half-open index ranges ``{name: [start, stop]}`` of a dataset of ``total``
    structures (a set without a range is empty); ``what`` names the dataset in errors.

    Raises:
        ValueError: a range reaching past ``total``.
    """
    splits = {name: list(range(*ranges.get(name, (0, 0)))) for name in SPLIT_NAMES}
    stop = max(bounds[1] for bounds in ranges.values())
    if stop > total:
        raise ValueError(f"split.ranges {dict(ranges)} reach index {stop - 1}, but {what} holds {total} structures")
    return splits


def matbench_split(total: int, fold: int, valid: "int | float", seed: int) -> Dict[str, List[int]]:
    """MatBench fold ``fold`` of ``total`` entries (:func:`~sciml.data.crystals.matbench_folds`):
    its test indices, and its training indices shuffled with ``seed`` (``torch.randperm``) of
    which ``valid`` (a fraction or a count) become the validation set; train and valid sorted."""
    from sciml.data.crystals.matbench import matbench_folds  # the package imports this module

    train, test = matbench_folds(total)[fold]
    train = torch.as_tensor(train)[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))]
    count = int(round(float(valid) * len(train))) if isinstance(valid, float) else int(valid)
    return {"train": sorted(train[count:].tolist()), "valid": sorted(train[:count].tolist()),
            "test": [int(i) for i in test]}


def alignn_split(
    num_entries: int,
    train_ratio: "float | int" = 0.8,
    val_ratio: "float | int" = 0.1,
    test_ratio: "float | int" = 0.1,
    seed: int = 123,
) -> Dict[str, List[int]]:
    """The random split of ALIGNN and ComFormer (``get_id_train_val_test``), index for index.

    The indices ``0..N-1`` are shuffled with Python's ``random.seed(seed); random.shuffle``;
    with ``n_train = int(train_ratio * N)``, ``n_val = int(val_ratio * N)`` and
    ``n_test = int(test_ratio * N)``, train is the first ``n_train`` shuffled indices, test the
    last ``n_test`` and valid the ``n_val`` just before them. Entries left over by the rounding
    lie between train and valid and belong to no set.

    The ComFormer / ALIGNN JARVIS ``formation_energy_peratom`` split, 44,578 / 5,572 / 5,572,
    is this split of the N = 55,723 ``dft_3d`` (2021.8.18) entries that have that target:
    int(0.8 * 55723) = 44578 and int(0.1 * 55723) = 5572 (one entry unused); N = 55,723 is the
    only N giving these sizes.

    An int instead of a ratio is a count (the reference's ``n_train``/``n_val``/``n_test``), e.g.
    Matformer's and ComFormer's Materials Project split 60,000 / 5,000 / 4,239.

    When ``n_test`` is 0 the reference code returns every index as test (``ids[-0:]``); here the
    test set is then empty.

    Returns:
        ``{"train": [...], "valid": [...], "test": [...]}`` of int indices into the dataset
        (in shuffled order, as the reference code returns them).

    Raises:
        ValueError: negative ratios or ratios summing above 1.
    """
    n_train, n_val, n_test = (v if isinstance(v, int) else int(v * num_entries) for v in (train_ratio, val_ratio, test_ratio))
    if min(train_ratio, val_ratio, test_ratio) < 0 or n_train + n_val + n_test > num_entries:
        raise ValueError(f"split sizes must be >= 0 and fit {num_entries} entries, got {train_ratio}, {val_ratio}, {test_ratio}")
    ids = list(range(num_entries))
    # the reference seeds and shuffles with the global generator; a private one with the same
    # seed gives the same permutation without resetting the caller's random state
    random.Random(seed).shuffle(ids)
    return {
        "train": ids[:n_train],
        "valid": ids[num_entries - n_test - n_val : num_entries - n_test],
        "test": ids[num_entries - n_test :],
    }


def save_split(split: Dict[str, Sequence[int]], ids: Sequence[str], path: PathLike) -> None:
    """Write a split as JSON lists of record ids: ``{"train": [id, ...], "valid": [...],
    "test": [...]}``.

    Args:
        split: index lists into ``ids`` (as :func:`alignn_split` returns).
        ids: the dataset's record ids (``atoms.info["id"]``), in dataset order.
        path: the JSON file to write.
    """
    out = {name: [str(ids[i]) for i in indices] for name, indices in split.items()}
    Path(path).write_text(json.dumps(out, indent=1))


def load_split(path: PathLike) -> Dict[str, List[str]]:
    """Read a split file written by :func:`save_split`, or ALIGNN's ``ids_train_val_test.json``
    (keys ``id_train``/``id_val``/``id_test``), as ``{"train": ids, "valid": ids, "test": ids}``.

    Raises:
        ValueError: not a JSON object of id lists.
    """
    content = json.loads(Path(path).read_text())
    if not isinstance(content, dict) or not all(isinstance(v, list) for v in content.values()):
        raise ValueError(f"{path}: expected a JSON object of id lists")
    return {_ALIGNN_KEYS.get(name, name): [str(i) for i in ids] for name, ids in content.items()}


def select_split(
    items: Sequence[Any], split_ids: Dict[str, Sequence[str]], id_of: Optional[Callable[[Any], str]] = None
) -> Dict[str, List[Any]]:
    """Group ``items`` (e.g. ``ase.Atoms`` with ``info["id"]``) by a loaded split.

    Args:
        items: the dataset.
        split_ids: ``{name: ids}`` as :func:`load_split` returns.
        id_of: the id of an item; default ``item.info["id"]``.

    Returns:
        ``{name: items}`` in the order of the split's id lists.

    Raises:
        KeyError: a split id that no item has (the message names it).
    """
    id_of = id_of or (lambda item: item.info["id"])
    by_id = {str(id_of(item)): item for item in items}
    out: Dict[str, List[Any]] = {}
    for name, ids in split_ids.items():
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KeyError(f"split {name!r}: {len(missing)} ids are not in the dataset (first: {missing[0]!r})")
        out[name] = [by_id[i] for i in ids]
    return out

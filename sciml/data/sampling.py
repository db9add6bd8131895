"""Batches balanced by atom count, for training on structures of very different sizes.

fairchem's ``load_balancing: atoms`` idea: in distributed training every rank should process
about the same number of atoms per step, or the fastest ranks wait for the slowest. Here each
rank computes the same epoch plan from the atom counts and a shared seed, so no communication
is needed, and takes its own share of every step.
"""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler


class AtomBalancedBatchSampler(Sampler[List[int]]):
    """A batch sampler (``DataLoader(dataset, batch_sampler=...)``) grouping structures by atoms.

    Each epoch the indices are shuffled with ``seed + epoch`` (or kept in order with
    ``shuffle=False``) and cut into steps; within a step, structures are shared among the
    ``num_replicas`` ranks by the greedy longest-processing-time rule (largest structure first,
    to the rank with the fewest atoms so far), and this rank (``rank``) gets its share.

    - ``batch_size``: each step takes ``num_replicas * batch_size`` structures; a rank's batch
      then holds about ``batch_size`` structures and the ranks' atom totals differ by at most
      the largest structure of the step.
    - ``max_atoms``: a step grows while every rank's batch stays within ``max_atoms`` atoms
      (each structure goes to the rank with the fewest atoms), at most ``batch_size``
      structures per rank when both are given.

    The last step may be short. With ``drop_last`` it is dropped when incomplete (fewer than
    ``num_replicas * batch_size`` structures in ``batch_size`` mode; some rank without a
    structure in ``max_atoms`` mode); otherwise ranks left empty get structures from the start of
    the epoch's order (as ``DistributedSampler`` pads), so every rank runs the same number of
    steps. Call
    :meth:`set_epoch` before each epoch for a new order.

    Args:
        natoms: atom count of every structure of the dataset (e.g. ``CachedDataset.natoms``).

    Raises:
        ValueError: neither ``batch_size`` nor ``max_atoms``; non-positive sizes; a structure
            larger than ``max_atoms``; ``rank`` outside ``0..num_replicas-1``; fewer structures
            than ranks.
    """

    def __init__(
        self,
        natoms: Sequence[int],
        batch_size: Optional[int] = None,
        max_atoms: Optional[int] = None,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.natoms = np.asarray(natoms, dtype=np.int64).reshape(-1)
        if batch_size is None and max_atoms is None:
            raise ValueError("give batch_size, max_atoms or both")
        for name, value in (("batch_size", batch_size), ("max_atoms", max_atoms), ("num_replicas", num_replicas)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in 0..{num_replicas - 1}, got {rank}")
        if self.natoms.size < num_replicas:
            raise ValueError(f"{self.natoms.size} structures cannot feed {num_replicas} ranks")
        if (self.natoms < 1).any():
            raise ValueError(f"structure {int(np.flatnonzero(self.natoms < 1)[0])} has no atoms")
        if max_atoms is not None and self.natoms.max() > max_atoms:
            big = int(self.natoms.argmax())
            raise ValueError(f"structure {big} has {int(self.natoms[big])} atoms, more than max_atoms={max_atoms}")
        self.batch_size, self.max_atoms = batch_size, max_atoms
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (the same on every rank for the same seed)."""
        self.epoch = epoch

    def steps(self) -> List[List[List[int]]]:
        """This epoch's plan: per step, every rank's batch of dataset indices."""
        order = self._order()
        raw = self._steps_by_atoms(order) if self.max_atoms is not None else self._steps_by_count(order)
        if raw and any(not batch for batch in raw[-1]):
            if self.drop_last:
                raw.pop()
            else:
                padding = iter(order)
                for batch in raw[-1]:
                    if not batch:
                        batch.append(int(next(padding)))
        return raw

    def __iter__(self) -> Iterator[List[int]]:
        for step in self.steps():
            yield step[self.rank]

    def __len__(self) -> int:
        return len(self.steps())

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.natoms.size)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.natoms.size)

    def _steps_by_count(self, order: np.ndarray) -> List[List[List[int]]]:
        size = self.batch_size * self.num_replicas
        steps = []
        for start in range(0, order.size, size):
            chunk = order[start:start + size]
            if self.drop_last and chunk.size < size:
                break
            steps.append(self._partition(chunk))
        return steps

    def _partition(self, chunk: "np.ndarray | List[int]", per_rank: float = math.inf) -> List[List[int]]:
        """Largest first, each to the rank with the fewest atoms that has room for another
        structure (ties: lowest rank)."""
        batches: List[List[int]] = [[] for _ in range(self.num_replicas)]
        atoms = [0] * self.num_replicas
        for index in sorted(np.asarray(chunk).tolist(), key=lambda i: (-self.natoms[i], i)):
            rank = min((r for r in range(self.num_replicas) if len(batches[r]) < per_rank), key=lambda r: (atoms[r], r))
            batches[rank].append(index)
            atoms[rank] += int(self.natoms[index])
        return batches

    def _fits(self, batches: List[List[int]]) -> bool:
        return max(int(self.natoms[b].sum()) if b else 0 for b in batches) <= self.max_atoms

    def _steps_by_atoms(self, order: np.ndarray) -> List[List[List[int]]]:
        """Steps in epoch order: a structure joins the step while some partition of the step keeps
        every rank within ``max_atoms`` (first the rank with the fewest atoms, else a fresh
        largest-first partition of the step); each finished step is shared largest-first when that
        partition fits, which balances the ranks."""
        steps: List[List[List[int]]] = []
        per_rank = self.batch_size if self.batch_size is not None else math.inf
        batches: List[List[int]] = [[] for _ in range(self.num_replicas)]
        atoms = [0] * self.num_replicas

        def close() -> None:
            members = [i for batch in batches for i in batch]
            balanced = self._partition(members, per_rank)
            steps.append(balanced if self._fits(balanced) else batches)

        for index in order.tolist():
            size = int(self.natoms[index])
            candidates = [r for r in range(self.num_replicas) if len(batches[r]) < per_rank]
            rank = min(candidates, key=lambda r: (atoms[r], r)) if candidates else None
            if rank is not None and atoms[rank] + size <= self.max_atoms:
                batches[rank].append(index)
                atoms[rank] += size
                continue
            repacked = self._partition([i for batch in batches for i in batch] + [index], per_rank) if candidates else None
            if repacked is not None and self._fits(repacked):
                batches = repacked
                atoms = [int(self.natoms[b].sum()) if b else 0 for b in batches]
                continue
            close()
            batches, atoms = [[] for _ in range(self.num_replicas)], [0] * self.num_replicas
            batches[0].append(index)
            atoms[0] = size
        close()
        return steps

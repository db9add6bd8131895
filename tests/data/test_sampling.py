"""AtomBalancedBatchSampler: every structure once per epoch, balanced ranks, atom caps, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from sciml.data.sampling import AtomBalancedBatchSampler

natoms_lists = st.lists(st.integers(1, 120), min_size=4, max_size=80)


def plans(natoms, replicas, **options):
    """Every rank's batches for one epoch (each rank runs its own sampler, as in DDP)."""
    return [list(AtomBalancedBatchSampler(natoms, num_replicas=replicas, rank=r, **options)) for r in range(replicas)]


@settings(max_examples=60, deadline=None)
@given(natoms=natoms_lists, replicas=st.integers(1, 4), batch_size=st.integers(1, 6), seed=st.integers(0, 3))
def test_batch_size_mode_covers_every_structure_and_balances_ranks(natoms, replicas, batch_size, seed):
    if len(natoms) < replicas:
        return
    per_rank = plans(natoms, replicas, batch_size=batch_size, seed=seed)
    assert len({len(batches) for batches in per_rank}) == 1  # every rank runs the same number of steps
    counts = Counter(i for batches in per_rank for batch in batches for i in batch)
    assert set(counts) == set(range(len(natoms)))
    assert sum(counts.values()) - len(natoms) <= replicas - 1  # only the last step is padded
    for step in zip(*per_rank):
        totals = [sum(natoms[i] for i in batch) for batch in step]
        assert all(batch for batch in step)
        # greedy largest-first: the ranks differ by at most the largest structure of the step
        assert max(totals) - min(totals) <= max(natoms[i] for batch in step for i in batch)
        assert sum(len(batch) for batch in step) <= replicas * batch_size


@settings(max_examples=60, deadline=None)
@given(natoms=natoms_lists, replicas=st.integers(1, 3), max_atoms=st.integers(120, 400), seed=st.integers(0, 3))
def test_max_atoms_mode_respects_the_cap(natoms, replicas, max_atoms, seed):
    if len(natoms) < replicas:
        return
    per_rank = plans(natoms, replicas, max_atoms=max_atoms, seed=seed, drop_last=True)
    seen = Counter(i for batches in per_rank for batch in batches for i in batch)
    assert max(seen.values(), default=1) == 1
    for step in zip(*per_rank):
        totals = [sum(natoms[i] for i in batch) for batch in step]
        assert max(totals) <= max_atoms and all(step)
        assert max(totals) - min(totals) <= max(natoms[i] for batch in step for i in batch)
    # without drop_last nothing is lost
    kept = Counter(i for batches in plans(natoms, replicas, max_atoms=max_atoms, seed=seed) for batch in batches for i in batch)
    assert set(kept) == set(range(len(natoms)))


def test_balance_beats_an_unbalanced_split():
    rng = np.random.default_rng(0)
    natoms = rng.integers(5, 200, size=400)
    sampler_steps = AtomBalancedBatchSampler(natoms, batch_size=8, num_replicas=4, seed=0).steps()
    spread = np.mean([np.ptp([natoms[b].sum() for b in step]) for step in sampler_steps])
    order = np.random.default_rng([0, 0]).permutation(400)
    naive = np.mean([np.ptp(natoms[order[k:k + 32]].reshape(4, 8).sum(axis=1)) for k in range(0, 400, 32) if k + 32 <= 400])
    assert spread < 0.2 * naive


def test_epochs_are_deterministic_and_differ():
    natoms = list(range(1, 101))
    a = AtomBalancedBatchSampler(natoms, batch_size=10, seed=5)
    b = AtomBalancedBatchSampler(natoms, batch_size=10, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(i for x in a for i in x) == list(range(100))
    unshuffled = AtomBalancedBatchSampler(natoms, batch_size=10, shuffle=False)
    assert sorted(list(unshuffled)[0]) == list(range(10))
    assert len(a) == 10


def test_works_as_a_dataloader_batch_sampler():
    natoms = [3, 7, 2, 9, 4, 4, 8, 1]
    data = [torch.full((n,), float(i)) for i, n in enumerate(natoms)]
    sampler = AtomBalancedBatchSampler(natoms, max_atoms=12, seed=1)
    batches = list(DataLoader(data, batch_sampler=sampler, collate_fn=torch.cat))
    assert all(batch.numel() <= 12 for batch in batches)
    assert sorted(torch.cat(batches).unique().tolist()) == list(range(8))


def test_bad_arguments():
    with pytest.raises(ValueError, match="give batch_size, max_atoms or both"):
        AtomBalancedBatchSampler([1, 2])
    with pytest.raises(ValueError, match="structure 1 has 50 atoms, more than max_atoms=20"):
        AtomBalancedBatchSampler([5, 50], max_atoms=20)
    with pytest.raises(ValueError, match="rank must lie in 0..1"):
        AtomBalancedBatchSampler([1, 2], batch_size=1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="2 structures cannot feed 4 ranks"):
        AtomBalancedBatchSampler([1, 2], batch_size=1, num_replicas=4)


@pytest.mark.parametrize("replicas", [2, 4])
@pytest.mark.parametrize("mode", [{"batch_size": 16}, {"max_atoms": 960}])
def test_ranks_get_atom_counts_within_ten_percent_on_a_skewed_dataset(mode, replicas):
    """OC20-like skew: log-normal sizes from 2 to 400 atoms (median 32). Every full step gives
    the ranks atom counts within 10% of each other, and max_atoms steps stay well filled."""
    natoms = np.clip(np.random.default_rng(1).lognormal(3.5, 0.8, size=2000).astype(int), 2, 400)
    for seed in range(3):
        steps = AtomBalancedBatchSampler(natoms, num_replicas=replicas, seed=seed, **mode).steps()
        for step in steps[:-1]:
            totals = np.array([natoms[batch].sum() for batch in step])
            assert np.ptp(totals) <= 0.1 * totals.mean()
        if "max_atoms" in mode:
            fullest = np.mean([max(natoms[batch].sum() for batch in step) for step in steps[:-1]])
            assert fullest > 0.9 * mode["max_atoms"]

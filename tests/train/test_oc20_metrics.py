"""OC20 metrics against values worked out by hand (fairchem's definitions, fixed atoms skipped)."""

from __future__ import annotations

import math

import pytest
import torch

from sciml.tasks.oc20_metrics import OC20Metrics, oc20_metrics

# Two structures: A with 2 atoms (a1 fixed), B with 3 atoms (b2 fixed).
NATOMS = torch.tensor([2, 3])
FIXED = torch.tensor([False, True, False, False, True])
ENERGY_TRUE = torch.tensor([1.0, 2.0])
ENERGY_PRED = torch.tensor([1.01, 2.015], dtype=torch.float64)  # errors 0.01 and 0.015 eV: both within 0.02
FORCES_TRUE = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])
FORCES_PRED = torch.tensor([[1.0, 0.02, 0], [5.0, 5.0, 5.0], [0, 2.0, 0], [0, 0, -1.0], [9.0, 9.0, 9.0]])


def test_s2ef_metrics_equal_hand_computed_values():
    m = oc20_metrics(ENERGY_PRED, ENERGY_TRUE, FORCES_PRED, FORCES_TRUE, NATOMS, FIXED)
    assert m["energy_mae"] == pytest.approx((0.01 + 0.015) / 2)
    assert m["energy_mse"] == pytest.approx((0.01**2 + 0.015**2) / 2)
    assert m["energy_within_threshold"] == 1.0
    # free atoms a0, b0, b1: |dF| components sum 0.02 + 0 + 2 over 9 components
    assert m["forces_mae"] == pytest.approx(2.02 / 9)
    # cosines 1/sqrt(1.0004), 1, -1
    assert m["forces_cosine_similarity"] == pytest.approx((1 / math.sqrt(1.0004) + 1 - 1) / 3)
    assert m["forces_magnitude_error"] == pytest.approx((math.sqrt(1.0004) - 1) / 3)
    # A: max component error 0.02 < 0.03 passes; B: b1 is off by 2 eV/Å
    assert m["energy_forces_within_threshold"] == 0.5


def test_fixed_atoms_and_thresholds_matter():
    everything = oc20_metrics(ENERGY_PRED, ENERGY_TRUE, FORCES_PRED, FORCES_TRUE, NATOMS, fixed=None)
    assert everything["forces_mae"] == pytest.approx((2.02 + 15 + 24) / 15)
    assert everything["energy_forces_within_threshold"] == 0.0
    worse = oc20_metrics(torch.tensor([1.025, 2.0], dtype=torch.float64), ENERGY_TRUE)
    assert worse["energy_within_threshold"] == pytest.approx(0.5) and "forces_mae" not in worse


def test_accumulating_batches_equals_one_pass():
    metrics = OC20Metrics()
    metrics.update(ENERGY_PRED[:1], ENERGY_TRUE[:1], FORCES_PRED[:2], FORCES_TRUE[:2], NATOMS[:1], FIXED[:2])
    metrics.update(ENERGY_PRED[1:], ENERGY_TRUE[1:], FORCES_PRED[2:], FORCES_TRUE[2:], NATOMS[1:], FIXED[2:])
    whole = oc20_metrics(ENERGY_PRED, ENERGY_TRUE, FORCES_PRED, FORCES_TRUE, NATOMS, FIXED)
    assert metrics.compute() == pytest.approx(whole)


def test_mismatched_sizes_are_refused():
    with pytest.raises(ValueError, match="natoms is needed"):
        oc20_metrics(ENERGY_PRED, ENERGY_TRUE, FORCES_PRED, FORCES_TRUE)
    with pytest.raises(ValueError, match="does not match"):
        oc20_metrics(ENERGY_PRED, ENERGY_TRUE, FORCES_PRED, FORCES_TRUE, torch.tensor([2, 2]), FIXED)

"""The irreps-level equivariance helper (``sciml.testing.irreps``) used by the op tests."""

import numpy as np
import pytest
import torch
from e3nn import o3

from sciml.ops.irreps import default_dtype
from sciml.testing import random_rotation
from sciml.testing.irreps import assert_irreps_equivariant, irreps_wigner_D

IRREPS = "2x0e+1x0o+2x1o+1x1e+1x2e+2x2o+1x3o"


@pytest.mark.parametrize("proper", [True, False])
def test_wigner_D_equals_e3nn(proper):
    rotation = torch.tensor(random_rotation(np.random.default_rng(3), proper=proper))
    with default_dtype(torch.float64):
        expected = o3.Irreps(IRREPS).D_from_matrix(rotation)
    assert (irreps_wigner_D(IRREPS, rotation) - expected).abs().max() < 1e-12


def test_passes_for_an_equivariant_function():
    """A mix of copies of the same irrep, and e3nn's harmonics of a vector."""
    assert_irreps_equivariant(lambda x: torch.cat([x[:, :3] + 2 * x[:, 3:6], x[:, 6:]], 1), ["2x1o+1x2e"], "1o+1x2e")
    sh = o3.Irreps.spherical_harmonics(3)
    assert_irreps_equivariant(lambda v: o3.spherical_harmonics(sh, v, True), ["1o"], sh)


def test_fails_for_a_function_that_is_not_equivariant():
    with pytest.raises(AssertionError, match="not equivariant"):  # scales one axis of a vector
        assert_irreps_equivariant(lambda v: v * torch.tensor([1.0, 2.0, 1.0], dtype=v.dtype), ["1o"], "1o")
    with pytest.raises(AssertionError, match="not equivariant"):  # mixes components across degrees
        assert_irreps_equivariant(lambda x: x.flip(-1), ["0e+1o+2e"], "2e+1o+0e")


def test_parity_is_checked_unless_disabled():
    """A vector read as a pseudovector is SO(3)- but not O(3)-equivariant."""
    with pytest.raises(AssertionError, match="improper"):
        assert_irreps_equivariant(lambda v: v, ["1o"], "1e")
    assert assert_irreps_equivariant(lambda v: v, ["1o"], "1e", parity=False) < 1e-12

"""Test utilities for sciml models, exposed to users (``sciml check``)."""

from sciml.testing.consistency import check_conservative
from sciml.testing.equivariance import (
    ALL_CHECKS,
    EquivarianceReport,
    assert_equivariant,
    check_equivariance,
    random_rotation,
)

__all__ = ["ALL_CHECKS", "check_conservative", "EquivarianceReport", "assert_equivariant", "check_equivariance", "random_rotation"]

"""Test utilities for sciml models, exposed to users (``sciml check``)."""

from sciml.testing.equivariance import (
    ALL_CHECKS,
    EquivarianceReport,
    assert_equivariant,
    check_equivariance,
    random_rotation,
)

__all__ = ["ALL_CHECKS", "EquivarianceReport", "assert_equivariant", "check_equivariance", "random_rotation"]

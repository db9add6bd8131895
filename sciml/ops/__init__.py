"""Numerical kernels on plain tensors (no graphs, no models)."""

from sciml.ops.scatter import scatter, scatter_max, scatter_mean, scatter_sum

__all__ = ["scatter", "scatter_sum", "scatter_mean", "scatter_max"]

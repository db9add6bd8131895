"""Exact e3nn references: e3nn bakes its Clebsch-Gordan and Wigner constants in the default dtype
at construction, so a module built under float32 is only float32-accurate even after .double()."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype = torch.float64):
    """Run the block with ``dtype`` as torch's default dtype, restoring the previous one after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)

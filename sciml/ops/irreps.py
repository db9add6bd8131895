"""Irreducible representations of O(3): parsing and the Clebsch-Gordan tensors in e3nn's basis.

sciml uses e3nn's conventions everywhere: irreps strings such as ``"16x0e+8x1o"``, real spherical
harmonics with polar axis y and components ordered m = -l..l, the ``mul_ir`` layout (each irrep's
``mul`` copies stored one after the other, each copy's 2l+1 components contiguous), and the
Clebsch-Gordan (Wigner 3j) tensors of ``e3nn.o3.wigner_3j`` (unit Frobenius norm).
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Iterator, Union

import numpy as np
import torch
from e3nn import o3

from sciml.ops.tracing import built_outside_tracing

IrrepsLike = Union[str, o3.Irreps, list, tuple]


def parse_irreps(value: IrrepsLike, name: str = "irreps") -> o3.Irreps:
    """Return ``value`` as ``e3nn.o3.Irreps``; a ``ValueError`` names ``name`` and the bad value."""
    try:
        return o3.Irreps(value)
    except (ValueError, TypeError, AssertionError) as error:
        raise ValueError(f"{name}: cannot parse {value!r} as irreps (expected e.g. '16x0e+8x1o'): {error}") from None


@lru_cache(maxsize=None)
@built_outside_tracing
def clebsch_gordan(l1: int, l2: int, l3: int) -> np.ndarray:
    """Real Clebsch-Gordan tensor (2l1+1, 2l2+1, 2l3+1) in float64, e3nn's ``wigner_3j(l1, l2, l3)``."""
    if not abs(l1 - l2) <= l3 <= l1 + l2:
        raise ValueError(f"no Clebsch-Gordan coupling {l1} x {l2} -> {l3}: violates |l1-l2| <= l3 <= l1+l2")
    tensor = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy()
    tensor[np.abs(tensor) < 1e-12] = 0.0
    tensor.setflags(write=False)
    return tensor


@lru_cache(maxsize=None)
@built_outside_tracing
def clebsch_gordan_tensor(l1: int, l2: int, l3: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """``clebsch_gordan(l1, l2, l3)`` as a torch tensor of ``dtype`` on ``device`` (cached)."""
    return torch.tensor(clebsch_gordan(l1, l2, l3), dtype=dtype, device=device)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Run the block with ``dtype`` as torch's default dtype (e3nn, and code built on it, make
    their constants in the default dtype at construction), restoring the previous one after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


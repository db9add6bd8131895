"""Input checks shared by the graph layer: each failure is a ValueError that names the problem."""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.data import atomic_numbers as _SYMBOL_TO_Z

MAX_ATOMIC_NUMBER = 118


def as_tensor(value, name: str) -> torch.Tensor:
    """Convert array-like input to a tensor, with an error naming ``name`` when that fails."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.tensor(np.require(np.asarray(value), requirements="C"))  # also views such as a[::-1]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} is not a numeric array: {err}") from None


def check_finite(values: torch.Tensor, name: str) -> None:
    """Raise if ``values`` holds NaN or inf, naming the first offending row."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        row = int(bad.reshape(values.shape[0], -1).any(dim=1).nonzero()[0]) if values.ndim else 0
        raise ValueError(f"{name} contains NaN or inf (first at index {row})")


def check_cutoff(cutoff: float) -> float:
    """Return the cutoff as float; it must be finite and positive (Å)."""
    try:
        value = float(cutoff)
    except (TypeError, ValueError):
        raise ValueError(f"cutoff must be a number, got {cutoff!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"cutoff must be a positive finite distance in Å, got {cutoff!r}")
    return value


def atomic_numbers_from_symbols(symbols) -> torch.Tensor:
    """Map chemical symbols to atomic numbers, (N,) int64; unknown symbols raise ValueError."""
    numbers = []
    for position, symbol in enumerate(symbols):
        z = _SYMBOL_TO_Z.get(str(symbol))
        if z is None or z == 0:
            raise ValueError(f"unknown element symbol {symbol!r} (atom {position})")
        numbers.append(z)
    return torch.tensor(numbers, dtype=torch.int64)


def check_atomic_numbers(numbers: torch.Tensor) -> None:
    """Atomic numbers must lie in 1..118."""
    if numbers.numel() and (int(numbers.min()) < 1 or int(numbers.max()) > MAX_ATOMIC_NUMBER):
        bad = numbers[(numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)][0]
        raise ValueError(f"unknown element: atomic number {int(bad)} is outside 1..{MAX_ATOMIC_NUMBER}")

"""Scatter reductions (sum, mean, max) over an index, on native torch or torch-scatter.

torch-scatter is used when it is installed (``pip install sciml[scatter]``) unless the environment
variable ``SCIML_SCATTER_BACKEND`` is ``torch``; both backends give equal results, including for
empty segments (which reduce to 0).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

try:
    import torch_scatter as _torch_scatter
except ImportError:  # optional dependency: source-only distribution
    _torch_scatter = None

REDUCTIONS = ("sum", "mean", "max")


def available_backends() -> tuple:
    """Names of the usable backends, fastest first."""
    return ("torch_scatter", "torch") if _torch_scatter is not None else ("torch",)


def _resolve(backend: Optional[str]) -> str:
    choice = backend or os.environ.get("SCIML_SCATTER_BACKEND", "auto")
    if choice == "auto":
        return available_backends()[0]
    if choice not in ("torch", "torch_scatter"):
        raise ValueError(f"unknown scatter backend {choice!r}; use 'auto', 'torch' or 'torch_scatter'")
    if choice == "torch_scatter" and _torch_scatter is None:
        raise ValueError("scatter backend 'torch_scatter' requested but torch-scatter is not installed")
    return choice


def scatter(
    src: torch.Tensor,
    index: torch.Tensor,
    dim_size: int,
    reduce: str = "sum",
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Reduce rows of ``src`` (E, ...) into ``dim_size`` rows by ``index`` (E,).

    Returns (dim_size, ...). Rows no index points at are 0 for every reduction. Differentiable.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduce!r}; use one of {REDUCTIONS}")
    if index.ndim != 1 or index.shape[0] != src.shape[0]:
        raise ValueError(
            f"index must have shape ({src.shape[0]},) to match src {tuple(src.shape)}, got {tuple(index.shape)}"
        )
    if _resolve(backend) == "torch_scatter":
        return _torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce=reduce)
    out_shape = (dim_size,) + tuple(src.shape[1:])
    expanded = index.view(-1, *([1] * (src.ndim - 1))).expand_as(src)
    if reduce == "max":
        out = torch.zeros(out_shape, dtype=src.dtype, device=src.device)
        return out.scatter_reduce(0, expanded, src, reduce="amax", include_self=False)
    out = torch.zeros(out_shape, dtype=src.dtype, device=src.device).index_add(0, index, src)
    if reduce == "mean":
        count = torch.bincount(index, minlength=dim_size).clamp(min=1).to(src.dtype)
        out = out / count.view(-1, *([1] * (src.ndim - 1)))
    return out


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum of rows of ``src`` per index value, (dim_size, ...)."""
    return scatter(src, index, dim_size, "sum")


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Mean of rows of ``src`` per index value (0 where none), (dim_size, ...)."""
    return scatter(src, index, dim_size, "mean")


def scatter_max(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Element-wise max of rows of ``src`` per index value (0 where none), (dim_size, ...)."""
    return scatter(src, index, dim_size, "max")

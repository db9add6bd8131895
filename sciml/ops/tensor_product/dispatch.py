"""Choice of tensor-product backend: argument, else ``SCIML_TP_BACKEND``, else "auto".

Backends: ``reference`` (dense Clebsch-Gordan einsums, the ground truth), ``torch`` (the sparse core
in portable torch ops), ``cpu`` (the sparse core as a compiled C/OpenMP kernel), ``triton`` and
``cuda`` (GPU kernels). "auto" takes the fastest one that works for the tensors' device and falls
back (to the reference), with one warning, when a kernel cannot be built.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

BACKENDS = ("auto", "reference", "torch", "cpu", "triton", "cuda")
_warned: set = set()


KERNEL_DTYPES = (torch.float32, torch.float64)  # of the cpu, triton and cuda kernels


def _available(name: str, device: torch.device) -> bool:
    if name in ("reference", "torch"):
        return True
    if name == "cpu":
        from sciml.ops.tensor_product import cpu

        return device.type == "cpu" and cpu.available()
    if name == "triton":
        from sciml.ops.tensor_product import triton_core

        return triton_core.available(device)
    if name == "cuda":
        from sciml.ops.tensor_product import cuda

        return device.type == "cuda" and cuda.available()
    return False


def _why_not(name: str) -> str:
    module = {"cpu": "cpu", "triton": "triton_core", "cuda": "cuda"}.get(name)
    if module is None:
        return ""
    from importlib import import_module

    reason = getattr(import_module(f"sciml.ops.tensor_product.{module}"), "unavailable_reason", lambda: "")()
    return f": {reason}" if reason else ""


def resolve_backend(requested: Optional[str], device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Name of the backend to run on ``device`` for ``dtype``; ``ValueError`` for unknown/unusable names.

    The compiled kernels take float32/float64. Under autocast on ``device`` other dtypes (e.g.
    bfloat16) run them in float32 (the operators' autocast rule); outside autocast they run on the
    reference under "auto".
    """
    name = requested or os.environ.get("SCIML_TP_BACKEND", "auto")
    if name not in BACKENDS:
        raise ValueError(f"unknown tensor-product backend {name!r}; choose one of {BACKENDS}")
    kernel_dtype = dtype in KERNEL_DTYPES or torch.is_autocast_enabled(device.type)
    if name in ("cpu", "triton", "cuda") and not kernel_dtype:
        raise ValueError(f"tensor-product backend {name!r} supports float32/float64, got {dtype}")
    if name == "auto" and not kernel_dtype:
        return "reference"
    if name != "auto":
        if not _available(name, device):
            raise ValueError(f"tensor-product backend {name!r} is not usable on {device}{_why_not(name)}")
        return name
    preferred = ("cuda", "triton") if device.type == "cuda" else ("cpu",)
    for candidate in preferred:
        if _available(candidate, device):
            return candidate
        if candidate not in _warned and candidate in ("cpu", "cuda"):
            _warned.add(candidate)
            warnings.warn(f"tensor-product backend {candidate!r} unavailable{_why_not(candidate)}; falling back")
    return "reference"

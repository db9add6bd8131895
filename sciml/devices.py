"""Where and in which precision a command runs: ``--device auto|cpu|cuda|cuda:N`` and
``--dtype float32|float64``, checked once with one-line errors.

A device that does not exist is a ValueError that says what to use instead (never a failure
deep inside torch or a misleading checkpoint error later).
"""

from __future__ import annotations

import re
from typing import Optional, Union

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N (mps, xpu where torch has them)"
DTYPE_NAMES = {"float32": torch.float32, "float64": torch.float64, "single": torch.float32, "double": torch.float64,
               "float": torch.float32}


def resolve_device(requested: Union[str, torch.device, None] = "auto") -> torch.device:
    """The device of a request: ``auto`` (or None) is the first GPU when CUDA works, else the CPU.

    Raises:
        ValueError: an unknown name, CUDA asked of a CPU-only torch build or of a machine
            without visible GPUs, or a GPU index that does not exist.
    """
    if isinstance(requested, torch.device):
        requested = str(requested)
    name = (requested or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name in ("mps", "xpu"):
        backend = getattr(torch, name) if name == "xpu" else torch.backends.mps
        if not backend.is_available():
            raise ValueError(f"{name} is not available in this torch build or on this machine; use --device cpu")
        return torch.device(name)
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ValueError(f"unknown device {requested!r}; use {DEVICE_CHOICES}")
    if torch.version.cuda is None and torch.version.hip is None:
        raise ValueError(f"CUDA is not available in this torch build (torch {torch.__version__} is CPU-only); "
                         f"use --device cpu")
    if not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine (no GPU visible; check CUDA_VISIBLE_DEVICES "
                         "and the driver); use --device cpu")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {name} does not exist: {count} CUDA device{'s' * (count != 1)} visible "
                         f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return torch.device("cuda", index)


def resolve_dtype(requested: Union[str, torch.dtype, None], default: Optional[torch.dtype] = None) -> Optional[torch.dtype]:
    """The torch dtype of ``float32``/``float64`` (also ``single``/``double``/``float``), a
    torch dtype, or ``default`` for None.

    Raises:
        ValueError: any other name.
    """
    if requested is None:
        return default
    if isinstance(requested, torch.dtype):
        if requested not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be float32 or float64, got {requested}")
        return requested
    dtype = DTYPE_NAMES.get(str(requested).strip().lower())
    if dtype is None:
        raise ValueError(f"unknown dtype {requested!r}; use float32 or float64")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` or ``float64``."""
    return str(dtype).replace("torch.", "")


def runtime_line(device: torch.device, dtype: torch.dtype) -> str:
    """The first line a command prints: device (with CPU threads or the GPU's name) and dtype."""
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    else:
        threads = torch.get_num_threads()
        where = f"cpu ({threads} thread{'s' * (threads != 1)})"
    return f"device {where}, dtype {dtype_name(dtype)}"

"""The ``cuda`` backend: the sparse core (``kernels/tp_core.cu``) as a CUDA C++ kernel.

Built on first use, only when a CUDA device is present, with ``torch.utils.cpp_extension.load``
(nvcc + ninja) from ``tp_core.cu`` (the kernel, no torch headers) and ``tp_core.cpp`` (a thin
binding), package data of ``sciml._kernels`` (``kernels/`` in a source checkout, so wheels ship
them), into ``$SCIML_CACHE_DIR/kernels`` (default ``~/.cache/sciml``) keyed by the sources, torch's
version and the GPUs' compute capabilities, so a shared home directory never loads a binary built
for another GPU. It runs as the CUDA implementation of ``torch.ops.sciml.tp_core``
(``sciml.ops.library``). Without a device, sources or a working toolchain the backend reports
itself unavailable with the reason, and "auto" falls back.

Kernel design (see the .cu): a block is (channels) x (output rows); a thread owns one (row,
channel) pair, walks the row's terms (receiver-sorted CSR) and the plan's entries grouped by output
column, and writes each output element once per group: no atomics, deterministic. It shares its
host-side schedule with the Triton backend (``_kernel_schedule``).
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

import torch

from sciml.ops import backends
from sciml.ops.cbuild import cache_dir
from sciml.ops.tensor_product._kernel_schedule import next_power_of_2, prepare_call
from sciml.ops.tensor_product.core import CorePlan, register_core_backend

SOURCE_DIR = Path(str(importlib.resources.files("sciml._kernels")))  # kernels/ of a source checkout
SOURCES = (SOURCE_DIR / "tp_core.cpp", SOURCE_DIR / "tp_core.cu")
THREADS_PER_BLOCK = 128
MAX_BLOCK_U = 128
_extension: Optional[Any] = None
_failure: Optional[str] = None


def _build() -> Any:
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    if torch.version.cuda is None:
        raise RuntimeError("this torch build has no CUDA support")
    missing = [str(path) for path in SOURCES if not path.exists()]
    if missing:
        raise RuntimeError(f"CUDA kernel sources not found: {', '.join(missing)}")
    from torch.utils import cpp_extension

    capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    fingerprint = b"".join(path.read_bytes() for path in SOURCES)
    fingerprint += f"{torch.__version__} {torch.version.cuda} {capabilities}".encode()
    key = hashlib.sha256(fingerprint).hexdigest()[:16]
    directory = cache_dir() / f"tp_core_cuda_{key}"
    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=f"sciml_tp_core_cuda_{key}",
        sources=[str(path) for path in SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        build_directory=str(directory),
        verbose=False,
    )


def available() -> bool:
    """Whether the CUDA kernel is built (building it on the first call; False without a device)."""
    global _extension, _failure
    if _extension is None and _failure is None:
        try:
            _extension = _build()
        except Exception as error:  # compiler, linker and import errors all mean "unavailable"
            _failure = f"{type(error).__name__}: {str(error).strip()[:500]}"
    return _extension is not None


def unavailable_reason() -> str:
    available()
    return _failure or ""


def block_shape(max_channels: int, out_rows: int) -> Tuple[int, int]:
    """(threads over channels, output rows per block): channels first, rows fill the block."""
    block_u = min(next_power_of_2(max_channels), MAX_BLOCK_U)
    block_rows = max(1, min(THREADS_PER_BLOCK // block_u, next_power_of_2(out_rows)))
    return block_u, block_rows


def run_core(
    launch: Callable[..., None],
    plan: CorePlan,
    operands: Sequence[Optional[torch.Tensor]],
    rowmaps: Sequence[Optional[torch.Tensor]],
    out_slot: int,
    out_rows: int,
    num_terms: int,
    stream: int = 0,
) -> torch.Tensor:
    """The core through ``launch`` (the binding's ``sparse_core`` or a stand-in with its signature).

    Returns (out_rows, widths[out_slot]); see ``core.torch_core`` for the other arguments.
    """
    call = prepare_call(plan, operands, rowmaps, out_slot, out_rows, num_terms)
    schedule = call.schedule
    if out_rows == 0 or num_terms == 0 or schedule.groups.shape[0] == 0:
        return call.result()
    block_u, block_rows = block_shape(schedule.max_channels, out_rows)
    launch(
        call.ptr, call.order, *call.inputs, *call.maps, schedule.groups, schedule.entries, schedule.coefficients,
        call.destination, call.pieces, block_u, block_rows, stream,
    )
    return call.result()


def cuda_core(
    plan: CorePlan,
    operands: Sequence[Optional[torch.Tensor]],
    rowmaps: Sequence[Optional[torch.Tensor]],
    out_slot: int,
    out_rows: int,
    num_terms: int,
) -> torch.Tensor:
    """Run the CUDA kernel; same contract as ``core.torch_core``."""
    if not available():
        raise RuntimeError(f"cuda tensor-product kernel unavailable: {_failure}")
    device = next(op for op in operands if op is not None).device
    if device.type != "cuda":
        raise ValueError(f"the cuda tensor-product kernel needs CUDA tensors, got {device}")
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        return run_core(_extension.sparse_core, plan, operands, rowmaps, out_slot, out_rows, num_terms, stream)


register_core_backend("cuda", cuda_core)
backends.register("tensor_product", "cuda", lambda device: unavailable_reason() if device.type == "cuda" else "it runs on CUDA tensors")

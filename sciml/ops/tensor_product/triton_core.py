"""The ``triton`` backend: the sparse core (see ``core.py``) as one generic Triton kernel.

One program owns ``BLOCK_R`` consecutive output rows (one *piece* of each, see
``_kernel_schedule``) and walks the plan's output-column groups. For a group it accumulates, in a
register tile [BLOCK_R rows, BLOCK_T terms, BLOCK_U channels], the product of every entry of the
group over every term of its rows, taken from the receiver-sorted CSR of ``core.sorted_rows``; it
then sums the tile over terms (and over channels when the output is broadcast) and adds the result
to the output rows once. Every output element is written by exactly one program, in a fixed order:
no atomics, results are bitwise reproducible, and a scatter-sum output (fused convolution) never
materialises per-term messages. The kernel reads the plan from tensors (groups, entries,
coefficients), so one compiled kernel serves every plan; only the tile sizes and the dtype are
compile-time constants.

Runs on CUDA devices, and on the CPU in Triton's interpreter (slow; for tests) when
``TRITON_INTERPRET=1`` was set before triton was first imported: Triton decides at import time
whether its own library functions (``tl.sum``, ``tl.max``) are interpreted.
"""

import os
from contextlib import nullcontext
from typing import Any, Dict, Optional, Sequence

import torch

from sciml.ops.tensor_product._kernel_schedule import next_power_of_2, prepare_call
from sciml.ops import backends
from sciml.ops.tensor_product.core import CorePlan, register_core_backend

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR = ""
except ImportError as error:  # pragma: no cover - depends on the installation
    triton = tl = None
    _IMPORT_ERROR = f"triton is not installed ({error})"

TILE = 256  # elements of the register tile (rows x terms x channels) a program aims for
MAX_BLOCK_U = 128
MAX_BLOCK_T = 16
_kernels: Dict[bool, Any] = {}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _interpreter_ready() -> bool:
    """Whether triton.language was imported in interpreter mode (TRITON_INTERPRET set at import)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - very old triton
        return False
    return isinstance(tl.sum, InterpretedFunction)


def available(device: Optional[torch.device] = None) -> bool:
    """Whether the kernel can run on ``device``: CUDA with triton, or the CPU in the interpreter."""
    if triton is None:
        return False
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and _interpreting() and _interpreter_ready()


def _why_not(device: torch.device) -> str:
    if available(device):
        return ""
    return unavailable_reason() or f"the kernel runs on CUDA devices (or the CPU in Triton's interpreter), not on {device}"


def unavailable_reason() -> str:
    if triton is None:
        return _IMPORT_ERROR
    if torch.cuda.is_available():
        return ""
    if not _interpreting():
        return "no CUDA device (on the CPU the triton kernel runs only in its interpreter: set TRITON_INTERPRET=1)"
    if not _interpreter_ready():
        return "TRITON_INTERPRET=1 was set after triton was imported; set it before starting Python"
    return ""


if triton is not None:

    def _sparse_core_kernel(
        ptr, order,  # CSR: terms of output row n are order[ptr[n]:ptr[n + 1]]
        x, y, w, map_x, map_y, map_w, width_x, width_y, width_w,  # inputs, row maps, row widths
        groups, num_groups, entries, coefficients,  # the schedule (see _kernel_schedule)
        destination, width_out, out_rows, pieces,
        BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_U: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        piece = tl.program_id(1)
        row_mask = rows < out_rows
        first = tl.load(ptr + rows, mask=row_mask, other=0)
        count = tl.load(ptr + rows + 1, mask=row_mask, other=0) - first
        t_begin = first + count * piece // pieces
        length = first + count * (piece + 1) // pieces - t_begin
        longest = tl.max(length, axis=0)
        out_row = destination + (rows.to(tl.int64) * pieces + piece) * width_out
        lanes_t = tl.arange(0, BLOCK_T)
        lanes_u = tl.arange(0, BLOCK_U)
        for g in range(num_groups):
            start = tl.load(groups + 5 * g)
            channels = tl.load(groups + 5 * g + 1)
            reduce = tl.load(groups + 5 * g + 2)
            begin = tl.load(groups + 5 * g + 3)
            end = tl.load(groups + 5 * g + 4)
            for u0 in range(0, channels, BLOCK_U):
                u = u0 + lanes_u
                u_mask = u < channels
                acc = tl.zeros([BLOCK_R, BLOCK_T, BLOCK_U], dtype=destination.dtype.element_ty)
                for t0 in range(0, longest, BLOCK_T):
                    t_mask = (t0 + lanes_t[None, :]) < length[:, None]  # [R, T]; padding rows have length 0
                    term = tl.load(order + t_begin[:, None] + t0 + lanes_t[None, :], mask=t_mask, other=0)
                    row_x = tl.load(map_x + term, mask=t_mask, other=0) * width_x
                    row_y = tl.load(map_y + term, mask=t_mask, other=0) * width_y
                    row_w = tl.load(map_w + term, mask=t_mask, other=0) * width_w
                    mask = t_mask[:, :, None] & u_mask[None, None, :]
                    for e in range(begin, end):
                        col_x = tl.load(entries + 6 * e) + u * tl.load(entries + 6 * e + 1)
                        col_y = tl.load(entries + 6 * e + 2) + u * tl.load(entries + 6 * e + 3)
                        col_w = tl.load(entries + 6 * e + 4) + u * tl.load(entries + 6 * e + 5)
                        value_x = tl.load(x + row_x[:, :, None] + col_x[None, None, :], mask=mask, other=0.0)
                        value_y = tl.load(y + row_y[:, :, None] + col_y[None, None, :], mask=mask, other=0.0)
                        value_w = tl.load(w + row_w[:, :, None] + col_w[None, None, :], mask=mask, other=0.0)
                        acc += tl.load(coefficients + e) * value_x * value_y * value_w
                # The program owns its rows, so a plain read-modify-write is race free; the barrier
                # orders it before a later group that may touch the same columns from other threads.
                if reduce != 0:  # output broadcast over channels: one column per row
                    column = out_row + start
                    summed = tl.sum(tl.sum(acc, axis=2), axis=1)
                    tl.store(column, tl.load(column, mask=row_mask, other=0.0) + summed, mask=row_mask)
                else:
                    block = out_row[:, None] + start + u[None, :]
                    block_mask = row_mask[:, None] & u_mask[None, :]
                    tl.store(block, tl.load(block, mask=block_mask, other=0.0) + tl.sum(acc, axis=1), mask=block_mask)
                tl.debug_barrier()


def _kernel() -> Any:
    """The kernel, jitted on first use in the current mode (the interpreter under TRITON_INTERPRET)."""
    interpret = _interpreting()
    if interpret not in _kernels:
        _kernels[interpret] = triton.jit(_sparse_core_kernel)
    return _kernels[interpret]


def tile_sizes(max_channels: int, terms_per_piece: int, out_rows: int) -> tuple:
    """(BLOCK_R, BLOCK_T, BLOCK_U, num_warps): channels first, then terms, then rows fill the tile."""
    block_u = min(next_power_of_2(max_channels), MAX_BLOCK_U)
    block_t = min(next_power_of_2(terms_per_piece), max(1, TILE // block_u), MAX_BLOCK_T)
    block_r = min(next_power_of_2(out_rows), max(1, TILE // (block_u * block_t)))
    num_warps = max(1, min(8, block_r * block_t * block_u // 64))
    return block_r, block_t, block_u, num_warps


def triton_core(
    plan: CorePlan,
    operands: Sequence[Optional[torch.Tensor]],
    rowmaps: Sequence[Optional[torch.Tensor]],
    out_slot: int,
    out_rows: int,
    num_terms: int,
) -> torch.Tensor:
    """Run the Triton kernel; same contract as ``core.torch_core``. Returns (out_rows, widths[out_slot])."""
    if triton is None:
        raise RuntimeError(f"triton tensor-product kernel unavailable: {_IMPORT_ERROR}")
    call = prepare_call(plan, operands, rowmaps, out_slot, out_rows, num_terms)
    schedule = call.schedule
    if out_rows == 0 or num_terms == 0 or schedule.groups.shape[0] == 0:
        return call.result()
    block_r, block_t, block_u, num_warps = tile_sizes(schedule.max_channels, call.terms_per_piece, out_rows)
    grid = (triton.cdiv(out_rows, block_r), call.pieces)
    x, y, w = call.inputs
    map_x, map_y, map_w = call.maps
    width_x, width_y, width_w = call.widths
    device = call.destination.device
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
        _kernel()[grid](
            call.ptr, call.order, x, y, w, map_x, map_y, map_w, width_x, width_y, width_w,
            schedule.groups, schedule.groups.shape[0], schedule.entries, schedule.coefficients,
            call.destination, call.out_width, out_rows, call.pieces,
            BLOCK_R=block_r, BLOCK_T=block_t, BLOCK_U=block_u, num_warps=num_warps,
        )
    return call.result()


if triton is not None:
    register_core_backend("triton", triton_core)


backends.register("tensor_product", "triton", _why_not)

"""The ``cpu`` backend: the sparse core (``cpu_kernel.c``) compiled with the system C compiler.

Built on first use (``sciml.ops.cbuild``: cached on disk, keyed by source, flags and CPU model).
One generic kernel serves every plan from tables; for
large workloads a kernel specialised to the plan (``cpu_codegen.py``) is compiled once and cached:
``SCIML_CPU_SPECIALISE`` = "auto" (default: when terms x entries x channels exceeds
``SPECIALISE_WORK``), "always" or "never"). Without a working compiler the backend reports itself
unavailable and "auto" falls back to the reference.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from sciml.ops.cbuild import compile_c, pointer
from sciml.ops.tensor_product.core import (
    INDEX_COLUMN,
    CorePlan,
    register_core_backend,
    register_fused_gradients,
    sorted_rows,
)
from sciml.ops.tensor_product.cpu_codegen import generate_source

SOURCE = Path(__file__).with_name("cpu_kernel.c")
_kernels: Dict[str, Callable] = {}
_failure: Optional[str] = None


def available() -> bool:
    """Whether the kernel is built (building it on the first call)."""
    global _failure
    if _failure is None and not _kernels:
        try:
            source = SOURCE.read_text()
            _kernels.update({name: compile_c(source, f"sciml_tp_core_{name}") for name in ("f32", "f64")})
            _kernels.update({f"gradients_{name}": compile_c(source, f"sciml_tp_gradients_{name}") for name in ("f32", "f64")})
        except (RuntimeError, OSError) as error:
            _failure = str(error)
    return _failure is None


def unavailable_reason() -> str:
    available()
    return _failure or ""


SCALE = 2


def input_order(out_slot: int) -> list:
    """The kernel's three inputs for ``out_slot``, the scale slot last when it is an input."""
    return [slot for slot in (0, 1, 3, 2) if slot != out_slot]


def _program(plan: CorePlan, out_slot: int) -> tuple:
    """The plan compiled for ``out_slot``: (paths (P, 8), groups (G, 3), offsets (n, 3), values (n,)).

    Entries of a path are grouped by the output column they write, so the kernel accumulates a
    group in registers and stores once; columns are precomputed per input slot. The scale slot s,
    when an input, comes last: per-channel, it multiplies each accumulated group once (pattern 2).
    """
    key = ("cpu_program", out_slot)
    if key in plan._device_cache:
        return plan._device_cache[key]
    inputs = input_order(out_slot)
    path_rows, group_rows, offsets, values = [], [], [], []
    for row in plan.paths:
        channels, begin, end = int(row[8]), int(row[9]), int(row[10])
        if end == begin:
            continue

        def columns(slot: int) -> np.ndarray:
            component = plan.indices[begin:end, INDEX_COLUMN[slot]] if slot in INDEX_COLUMN else np.zeros(end - begin, np.int64)
            return row[slot] + component * (1 if row[4 + slot] else channels)

        out_columns = columns(out_slot)
        order = np.argsort(out_columns, kind="stable")
        first_entry = sum(len(v) for v in values)
        offsets.append(np.stack([columns(slot)[order] for slot in inputs], axis=1))
        values.append(plan.values[begin:end][order])
        sorted_columns = out_columns[order]
        starts = np.flatnonzero(np.r_[True, sorted_columns[1:] != sorted_columns[:-1]])
        stops = np.r_[starts[1:], len(order)]
        first_group = len(group_rows)
        group_rows += [[sorted_columns[a], first_entry + a, first_entry + b] for a, b in zip(starts, stops)]
        pattern = [int(row[4 + slot]) for slot in inputs]
        if inputs[2] == SCALE and not row[4 + SCALE]:
            pattern[2] = 2
        path_rows.append([channels, *pattern, first_group, len(group_rows), row[4 + out_slot], row[SCALE]])
    program = (
        torch.as_tensor(np.asarray(path_rows, dtype=np.int64).reshape(-1, 8)),
        torch.as_tensor(np.asarray(group_rows, dtype=np.int64).reshape(-1, 3)),
        torch.as_tensor(np.concatenate(offsets) if offsets else np.zeros((0, 3), np.int64)),
        torch.as_tensor(np.concatenate(values) if values else np.zeros(0)),
    )
    plan._device_cache[key] = program
    return program


SPECIALISE_MODES = ("auto", "always", "never")
SPECIALISE_WORK = 20_000_000  # terms x entries x channels above which "auto" specialises (compile: 0.1-10 s, once)


def _specialises(plan: CorePlan, num_terms: int) -> bool:
    """Whether products of ``plan`` over ``num_terms`` terms use kernels specialised to the plan."""
    mode = os.environ.get("SCIML_CPU_SPECIALISE", "auto")
    if mode not in SPECIALISE_MODES:
        raise ValueError(f"SCIML_CPU_SPECIALISE must be one of {SPECIALISE_MODES}, got {mode!r}")
    if mode != "auto":
        return mode == "always"
    channels = int(plan.paths[:, 8].max()) if len(plan.paths) else 0
    return num_terms * len(plan.values) * channels >= SPECIALISE_WORK


def _kernel(plan: CorePlan, out_slot: int, dtype: torch.dtype, program: tuple, num_terms: int) -> Callable:
    """The plan-specialised kernel when worth it (``SCIML_CPU_SPECIALISE``), else the generic one."""
    suffix = "f32" if dtype == torch.float32 else "f64"
    key = ("cpu_specialised", out_slot, suffix)
    if key not in plan._device_cache:
        if not _specialises(plan, num_terms):
            return _kernels[suffix]
        real = "float" if dtype == torch.float32 else "double"
        plan._device_cache[key] = compile_c(generate_source(program, real, "sciml_tp_core_specialised"), "sciml_tp_core_specialised")
    return plan._device_cache[key]


def cpu_core(
    plan: CorePlan,
    operands: Sequence[Optional[torch.Tensor]],
    rowmaps: Sequence[Optional[torch.Tensor]],
    out_slot: int,
    out_rows: int,
    num_terms: int,
) -> torch.Tensor:
    """Run the compiled core; same contract as ``core.torch_core``."""
    if not available():
        raise RuntimeError(f"cpu tensor-product kernel unavailable: {_failure}")
    inputs = input_order(out_slot)
    dtype = operands[inputs[0]].dtype
    if dtype not in (torch.float32, torch.float64) or any(operands[s].dtype != dtype for s in inputs):
        raise TypeError(f"the cpu tensor-product kernel needs float32 or float64 operands of one dtype, got {dtype}")
    if rowmaps[out_slot] is not None and out_rows * 64 < num_terms:
        # few output rows (e.g. the gradient of shared weights): per-term rows in parallel, then reduce
        per_term = cpu_core(plan, operands, [*rowmaps[:out_slot], None, *rowmaps[out_slot + 1 :]], out_slot, num_terms, num_terms)
        return torch.zeros(out_rows, plan.widths[out_slot], dtype=dtype).index_add_(0, rowmaps[out_slot], per_term)
    out = torch.empty(out_rows, plan.widths[out_slot], dtype=dtype)
    tensors = [operands[slot].contiguous() for slot in inputs]
    maps = [None if rowmaps[slot] is None else rowmaps[slot].contiguous() for slot in inputs]
    ptr, order = sorted_rows(rowmaps[out_slot], out_rows, num_terms)
    program = _program(plan, out_slot)
    paths, groups, offsets, values = program
    _kernel(plan, out_slot, dtype, program, num_terms)(
        ctypes.c_int64(out_rows), pointer(ptr), pointer(order),
        (ctypes.c_void_p * 3)(*[pointer(t) for t in tensors]), (ctypes.c_void_p * 3)(*[pointer(m) for m in maps]),
        (ctypes.c_int64 * 3)(*[plan.widths[slot] for slot in inputs]), pointer(out),
        ctypes.c_int64(plan.widths[out_slot]), ctypes.c_int64(paths.shape[0]), pointer(paths),
        pointer(groups), pointer(offsets), pointer(values),
        ctypes.c_int(torch.get_num_threads()),
    )
    return out


def _channelwise(plan: CorePlan) -> bool:
    """Every path has a and the output per-channel and b broadcast: the fused gradients apply."""
    key = "cpu_channelwise"
    if key not in plan._device_cache:
        rows = plan.paths
        plan._device_cache[key] = bool(len(rows)) and bool(
            np.all(rows[:, 4] == 0) and np.all(rows[:, 5] == 1) and np.all(rows[:, 7] == 0)
        )
    return plan._device_cache[key]


def cpu_gradients(plan: CorePlan, a: torch.Tensor, b: torch.Tensor, s: torch.Tensor, grad: torch.Tensor):
    """(grad_a, grad_b, grad_s) of a forward core in one pass (``cpu_kernel.c``), or None where the
    plan is not channelwise; same values as three separate core calls."""
    if not _channelwise(plan) or a.dtype not in (torch.float32, torch.float64) or _specialises(plan, a.shape[0]):
        return None  # large products: the per-plan kernels, one per gradient, are faster (measured)
    tensors = [t.contiguous() for t in (a, b, s, grad)]
    grads = [torch.empty_like(t) for t in tensors[:3]]
    paths, indices, values = plan.tensors(torch.device("cpu"))
    _kernels["gradients_f32" if a.dtype == torch.float32 else "gradients_f64"](
        ctypes.c_int64(a.shape[0]), *[pointer(t) for t in tensors + grads],
        (ctypes.c_int64 * 4)(*plan.widths), ctypes.c_int64(paths.shape[0]), pointer(paths),
        pointer(indices), pointer(values), ctypes.c_int(torch.get_num_threads()),
    )
    return tuple(grads)


register_core_backend("cpu", cpu_core)
register_fused_gradients("cpu", cpu_gradients)

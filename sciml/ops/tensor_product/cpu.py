"""The ``cpu`` backend: the sparse core as the operator ``torch.ops.sciml.tp_core`` on CPU tensors.

The operator (``kernels/sciml_ops.cpp``, see ``sciml.ops.library``) runs a C kernel
(``cpu_kernel.c``) compiled per machine by ``sciml.ops.cbuild``. One generic kernel serves every
plan from tables; for large workloads kernels specialised to the plan (``cpu_codegen.py``) are
compiled once and cached: ``SCIML_CPU_SPECIALISE`` = "auto" (default: when terms x entries x
channels exceeds ``SPECIALISE_WORK``), "always" or "never". The plan's tables travel with every
call as operator arguments, so the operator (and its autograd formula, the same operator on
another output slot) needs no state of its own. Without a working compiler the backend reports
itself unavailable and "auto" falls back to the reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from sciml.ops import backends, library
from sciml.ops.cbuild import kernel_name
from sciml.ops.tracing import built_outside_tracing, is_tracing
from sciml.ops.tensor_product.core import INDEX_COLUMN, CorePlan, path_column
from sciml.ops.tensor_product.cpu_codegen import ProgramPath, generate_gradients_source, generate_source

SOURCE = Path(__file__).with_name("cpu_kernel.c")
SUFFIXES = {torch.float32: "f32", torch.float64: "f64"}
_generic: dict = {}
_failure: Optional[str] = None


def _generic_kernels() -> dict:
    """"path:symbol" of the generic core and fused-gradient kernels per dtype suffix."""
    if not _generic:
        source = SOURCE.read_text()
        for suffix in SUFFIXES.values():
            _generic[f"core_{suffix}"] = kernel_name(source, f"sciml_tp_core_{suffix}")
            _generic[f"gradients_{suffix}"] = kernel_name(source, f"sciml_tp_gradients_{suffix}")
    return _generic


def available() -> bool:
    """Whether the kernels and the operator library are built (building them on the first call)."""
    global _failure
    if _failure is None and not _generic:
        try:
            _generic_kernels()
            if not library.available():
                _failure = library.unavailable_reason()
        except (RuntimeError, OSError) as error:
            _failure = str(error)
    return _failure is None


def unavailable_reason() -> str:
    available()
    return _failure or ""


backends.register("tensor_product", "cpu", lambda device: unavailable_reason() if device.type == "cpu" else "it runs on CPU tensors")


SCALE = 2


def input_order(out_slot: int) -> list:
    """The kernel's three inputs for ``out_slot``, the scale slot last when it is an input."""
    return [slot for slot in (0, 1, 3, 2) if slot != out_slot]


@built_outside_tracing
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
    for row in plan.path_rows():
        channels, begin, end = row.channels, row.begin, row.end
        if end == begin:
            continue

        def columns(slot: int) -> np.ndarray:
            component = plan.indices[begin:end, INDEX_COLUMN[slot]] if slot in INDEX_COLUMN else np.zeros(end - begin, np.int64)
            return row.offset(slot) + component * (1 if row.broadcast(slot) else channels)

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
        pattern = [int(row.broadcast(slot)) for slot in inputs]
        if inputs[2] == SCALE and not row.broadcast(SCALE):
            pattern[2] = 2
        path_rows.append(ProgramPath(channels, *pattern, first_group, len(group_rows), int(row.broadcast(out_slot)), row.off_s))
    program = (
        torch.as_tensor(np.asarray(path_rows, dtype=np.int64).reshape(-1, len(ProgramPath._fields))),
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
    channels = int(path_column(plan.paths, "channels").max()) if len(plan.paths) else 0
    return num_terms * len(plan.values) * channels >= SPECIALISE_WORK


def _specialised_kernel(plan: CorePlan, out_slot: int, suffix: str) -> str:
    key = ("cpu_specialised", out_slot, suffix)
    if key not in plan._device_cache:
        real = "float" if suffix == "f32" else "double"
        source = generate_source(_program(plan, out_slot), real, "sciml_tp_core_specialised", SOURCE.read_text())
        plan._device_cache[key] = kernel_name(source, "sciml_tp_core_specialised")
    return plan._device_cache[key]


def _specialised_gradients(plan: CorePlan, suffix: str) -> str:
    key = ("cpu_specialised_gradients", suffix)
    if key not in plan._device_cache:
        real = "float" if suffix == "f32" else "double"
        source = generate_gradients_source((plan.paths, plan.indices, plan.values), real, "sciml_tp_gradients_specialised",
                                           SOURCE.read_text())
        plan._device_cache[key] = kernel_name(source, "sciml_tp_gradients_specialised")
    return plan._device_cache[key]


def kernels(plan: CorePlan, dtype: torch.dtype, num_terms, out_slot: int, differentiable: bool) -> str:
    """The operator's ``kernels`` argument, newline-separated "path:symbol": one per output slot,
    then the one-pass gradients of the forward slot (``fused_gradients``).

    Kernels specialised to the plan where ``SCIML_CPU_SPECIALISE`` asks for them: for the slot
    computed now and, when gradients may follow (``differentiable``), for every slot and the
    one-pass gradients of a channelwise plan, so the autograd formula finds them among the
    operator's arguments. While tracing (``num_terms`` symbolic) the kernels already built for
    the plan are used.
    """
    specialise = not is_tracing() and _specialises(plan, num_terms)
    return _kernel_names(plan, dtype, out_slot, differentiable, specialise)


@built_outside_tracing
def _kernel_names(plan: CorePlan, dtype: torch.dtype, out_slot: int, differentiable: bool, specialise: bool) -> str:
    suffix = SUFFIXES[dtype]
    generic = _generic_kernels()[f"core_{suffix}"]
    if specialise:
        wanted = range(4) if differentiable else (out_slot,)
        for slot in wanted:
            _specialised_kernel(plan, slot, suffix)
        if differentiable and _channelwise(torch.as_tensor(plan.paths)):
            _specialised_gradients(plan, suffix)
    cores = [plan._device_cache.get(("cpu_specialised", slot, suffix), generic) for slot in range(4)]
    gradients = plan._device_cache.get(("cpu_specialised_gradients", suffix), _generic_kernels()[f"gradients_{suffix}"])
    return "\n".join(cores + [gradients])


def _selection(columns: Optional[np.ndarray]) -> torch.Tensor:
    """The kernels' column selection of one slot: empty where operand column c is tensor column c."""
    if columns is None or np.array_equal(columns, np.arange(len(columns))):
        return torch.zeros(0, dtype=torch.int64)
    return torch.as_tensor(columns, dtype=torch.int64)


@built_outside_tracing
def tables(plan: CorePlan) -> List[torch.Tensor]:
    """The operator's ``tables`` argument: per output slot the program (paths, groups, offsets,
    values), then the plan's own (paths, indices, values), then per slot its column selection
    (``CorePlan.columns``; empty for none); built once per plan."""
    key = "cpu_tables"
    if key not in plan._device_cache:
        programs = [tensor for slot in range(4) for tensor in _program(plan, slot)]
        selections = [_selection(columns) for columns in plan.columns]
        plan._device_cache[key] = programs + list(plan.tensors(torch.device("cpu"))) + selections
    return plan._device_cache[key]


def _channelwise(paths: torch.Tensor) -> bool:
    """Every path has a and the output per-channel and b broadcast: the fused gradients apply."""
    if not paths.shape[0]:
        return False
    return bool(((path_column(paths, "bc_a") == 0) & (path_column(paths, "bc_b") == 1) & (path_column(paths, "bc_o") == 0)).all())


def fused_gradients(tables: Sequence[torch.Tensor], widths: Sequence[int], kernels: str, a: torch.Tensor,
                    b: torch.Tensor, s: torch.Tensor, grad: torch.Tensor):
    """(grad_a, grad_b, grad_s) of a forward core in one pass (``cpu_kernel.c``; specialised to the
    plan where ``kernels`` names such a kernel), or None where the plan is not channelwise; same
    values as three separate core calls, reading the output gradient once instead of three times."""
    if not _channelwise(tables[16]) or a.dtype not in SUFFIXES:
        return None
    kernel = kernels.split("\n")[4]
    return torch.ops.sciml.tp_core_gradients(a, b, s, grad, *tables[16:19], tables[19:23], list(widths), kernel)

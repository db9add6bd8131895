"""Host-side preparation shared by the GPU cores (``triton_core`` and ``cuda``).

A GPU program owns a block of output rows and must write every output element once, from
registers, without atomics. The plan's entries are therefore regrouped by the output columns they
write: a *group* is every (path, Clebsch-Gordan entry) pair of one output slot that writes the same
columns ``start + u`` (u < channels), or, for an output broadcast over channels, the single column
``start`` fed by the sum over u. A kernel loops over groups; for each it accumulates all the
group's entries over all terms of its rows in registers and adds the result to the output once.

Each scheduled entry is flattened to the column and channel step of its three inputs (in slot order,
skipping the output slot), so kernels never look at paths, broadcast flags or component indices:

    out[row_o(z), start + u] += coefficient * x[row_x(z), col_x + u * step_x]
                                            * y[row_y(z), col_y + u * step_y] * w[row_w(z), col_w + u * step_w]

with step 0 for an input broadcast over channels and 1 otherwise. Schedules are built once per
(plan, output slot, device, dtype) and cached on the plan.

Rows whose terms are too many for one program (the gradient of shared weights sums every term into
a single row) are split into ``pieces`` equal parts whose partial rows are summed afterwards in a
fixed order, so the result stays deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from sciml.ops.tensor_product.core import (
    INDEX_COLUMN,
    CorePlan,
    broadcast_column,
    offset_column,
    path_column,
    sorted_rows,
)

GROUP_COLUMNS = ("start", "channels", "reduce", "begin", "end")
ENTRY_COLUMNS = ("col_x", "step_x", "col_y", "step_y", "col_w", "step_w")
TERMS_PER_PROGRAM = 128  # a row with more terms than this (on average) is split into pieces
MAX_PROGRAMS = 8192  # pieces are only added while rows * pieces stays below this


def next_power_of_2(value: int) -> int:
    """Smallest power of two >= ``value`` (1 for value <= 1)."""
    return 1 if value <= 1 else 1 << (int(value) - 1).bit_length()


@dataclass(frozen=True)
class KernelSchedule:
    """The entries of one plan regrouped by output columns, for output slot ``out_slot``.

    ``inputs``: the three input slots in kernel operand order (x, y, w).
    ``groups``: int32 (G, 5) rows ``GROUP_COLUMNS``; a group's entries are ``begin:end``.
    ``entries``: int32 (m, 6) rows ``ENTRY_COLUMNS``.
    ``coefficients``: (m,) in the operands' dtype.
    ``max_channels``: the largest ``channels`` of any group (0 for an empty schedule).
    """

    inputs: Tuple[int, int, int]
    groups: torch.Tensor
    entries: torch.Tensor
    coefficients: torch.Tensor
    max_channels: int


def _entry_paths(plan: CorePlan) -> Tuple[np.ndarray, np.ndarray]:
    """(path, entry) index of every Clebsch-Gordan entry visited by the plan, in plan order."""
    begins, ends = path_column(plan.paths, "begin"), path_column(plan.paths, "end")
    ranges = [np.arange(begin, end) for begin, end in zip(begins, ends)]
    entry = np.concatenate(ranges).astype(np.int64) if ranges else np.zeros(0, np.int64)
    path = np.repeat(np.arange(len(begins)), ends - begins)
    return path, entry


def _columns(plan: CorePlan, slot: int, path: np.ndarray, entry: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per (path, entry): first column in ``slot`` and channel step (0 if broadcast over channels)."""
    channels = path_column(plan.paths, "channels")[path]
    broadcast = path_column(plan.paths, broadcast_column(slot))[path].astype(bool)
    component = plan.indices[entry, INDEX_COLUMN[slot]] if slot in INDEX_COLUMN else np.zeros(len(entry), np.int64)
    start = path_column(plan.paths, offset_column(slot))[path] + component * np.where(broadcast, 1, channels)
    return start, np.where(broadcast, 0, 1)


def _build(plan: CorePlan, out_slot: int) -> tuple:
    if max(plan.widths) >= 2**31:
        raise ValueError("operand rows wider than 2**31 columns are not supported by the GPU cores")
    inputs = tuple(slot for slot in range(4) if slot != out_slot)
    path, entry = _entry_paths(plan)
    start, step_o = _columns(plan, out_slot, path, entry)
    channels = path_column(plan.paths, "channels")[path]
    reduce = (step_o == 0).astype(np.int64)
    values = plan.values[entry]
    keep = (values != 0) & (channels > 0)
    table = np.stack([column for slot in inputs for column in _columns(plan, slot, path, entry)], axis=1)
    table, values = table[keep].reshape(-1, 6), values[keep]
    start, channels, reduce = start[keep], channels[keep], reduce[keep]
    order = np.lexsort((reduce, channels, start))  # stable: entries of a group keep plan order
    key = np.stack([start, channels, reduce], axis=1)[order].reshape(-1, 3)
    table, values = table[order], values[order]
    new_group = np.ones(len(key), bool)
    new_group[1:] = np.any(key[1:] != key[:-1], axis=1)
    begin = np.flatnonzero(new_group)
    end = np.r_[begin[1:], len(key)].astype(np.int64)
    groups = np.concatenate([key[begin], begin[:, None], end[:, None]], axis=1).reshape(-1, 5)
    return inputs, groups.astype(np.int32), table.astype(np.int32), values


def kernel_schedule(plan: CorePlan, out_slot: int, device: torch.device, dtype: torch.dtype) -> KernelSchedule:
    """The (cached) schedule of ``plan`` with ``out_slot`` as output, on ``device`` in ``dtype``."""
    key = ("kernel-schedule", out_slot, str(device), dtype)
    if key not in plan._device_cache:
        inputs, groups, entries, values = _build(plan, out_slot)
        plan._device_cache[key] = KernelSchedule(
            inputs=inputs,
            groups=torch.as_tensor(groups, device=device),
            entries=torch.as_tensor(entries, device=device),
            coefficients=torch.as_tensor(values, dtype=dtype, device=device),
            max_channels=int(groups[:, 1].max()) if len(groups) else 0,
        )
    return plan._device_cache[key]


@dataclass
class KernelCall:
    """Everything a GPU core launch needs, on the operands' device.

    ``inputs``/``maps``/``widths``: the three input operands (rows, width), their int64 (num_terms,)
    row maps (identity maps materialised) and widths, in ``schedule.inputs`` order.
    ``ptr`` int64 (out_rows + 1,) and ``order`` int64 (num_terms,): the terms of output row n are
    ``order[ptr[n]:ptr[n + 1]]`` (CSR from ``core.sorted_rows``).
    ``destination``: zeroed (out_rows * pieces, out_width); row ``n * pieces + k`` receives piece k
    of output row n. ``terms_per_piece``: average terms a program visits (for tile sizes).
    """

    schedule: KernelSchedule
    inputs: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    maps: Tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    widths: Tuple[int, int, int]
    ptr: torch.Tensor
    order: torch.Tensor
    out_rows: int
    out_width: int
    pieces: int
    destination: torch.Tensor
    terms_per_piece: int

    def result(self) -> torch.Tensor:
        """The output (out_rows, out_width): the destination with its pieces summed in order."""
        if self.pieces == 1:
            return self.destination
        return self.destination.view(self.out_rows, self.pieces, self.out_width).sum(dim=1)


def prepare_call(
    plan: CorePlan,
    operands: Sequence[Optional[torch.Tensor]],
    rowmaps: Sequence[Optional[torch.Tensor]],
    out_slot: int,
    out_rows: int,
    num_terms: int,
    terms_per_program: Optional[int] = None,
) -> KernelCall:
    """Validate a core call (``core.torch_core``'s arguments) and lay it out for a GPU kernel."""
    reference = next(op for op in operands if op is not None)
    device, dtype = reference.device, reference.dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"GPU tensor-product cores support float32/float64, got {dtype}")
    schedule = kernel_schedule(plan, out_slot, device, dtype)
    inputs, maps = [], []
    identity = None
    for slot in schedule.inputs:
        tensor = operands[slot]
        if tensor is None or tensor.dtype != dtype or tensor.device != device:
            raise TypeError("all tensor-product operands must be given, with the same dtype and device")
        if tensor.dim() != 2 or tensor.shape[1] != plan.widths[slot]:
            raise ValueError(f"operand {slot} must be (rows, {plan.widths[slot]}), got {tuple(tensor.shape)}")
        inputs.append(tensor.contiguous())
        if rowmaps[slot] is None:
            if identity is None:
                identity = torch.arange(num_terms, device=device)
            maps.append(identity)
        else:
            maps.append(rowmaps[slot].to(device=device, dtype=torch.int64).contiguous())
    if rowmaps[out_slot] is None:
        if out_rows != num_terms:
            raise ValueError(f"without an output rowmap out_rows ({out_rows}) must equal num_terms ({num_terms})")
        ptr = torch.arange(num_terms + 1, device=device)
        order = identity if identity is not None else torch.arange(num_terms, device=device)
    else:
        ptr, order = sorted_rows(rowmaps[out_slot].to(device=device, dtype=torch.int64), out_rows, num_terms)
    per_program = terms_per_program or TERMS_PER_PROGRAM
    pieces = 1
    if out_rows and num_terms > out_rows * per_program:
        pieces = min(-(-num_terms // (out_rows * per_program)), max(1, MAX_PROGRAMS // out_rows))
    out_width = plan.widths[out_slot]
    destination = torch.zeros(out_rows * pieces, out_width, dtype=dtype, device=device)
    return KernelCall(
        schedule=schedule,
        inputs=tuple(inputs),
        maps=tuple(maps),
        widths=tuple(plan.widths[slot] for slot in schedule.inputs),
        ptr=ptr.contiguous(),
        order=order.contiguous(),
        out_rows=out_rows,
        out_width=out_width,
        pieces=pieces,
        destination=destination,
        terms_per_piece=-(-num_terms // max(1, out_rows * pieces)),
    )

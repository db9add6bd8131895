"""The sparse tensor-product core that every fast backend implements.

Every tensor product (and its gradients) is lowered to one primitive over four operands in the
slots ``a`` (input 1), ``b`` (input 2), ``s`` (a per-channel scale, e.g. per-edge weights) and ``o``
(output). Each operand is a row-major matrix; each *term* z (an edge, or a batch row) reads row
``rowmap[slot][z]`` of every operand (row z where the rowmap is None). Within a row, the plan's
*paths* address blocks in the ``ir_mul`` layout: block element (component i, channel u) sits at
column ``offset + i * channels + u``, or ``offset + i`` for a broadcast operand (one channel shared
by all u). For every term, path, Clebsch-Gordan entry e = (i_a, i_b, i_o, value) and channel u::

    o[row_o(z), off_o + i_o.U + u] += value * a[row_a(z), off_a + i_a.U + u]
                                            * b[row_b(z), off_b + i_b.U + u] * s[row_s(z), off_s + u]

The product is symmetric in its four operands, so the gradient with respect to any input slot is
the same primitive with that slot as the output and the incoming gradient in slot ``o``: backends
implement only this forward, and gradients of any order follow. Only structural non-zeros of the
Clebsch-Gordan tensors are visited, outer products are never materialised, and a non-identity
output rowmap means the output is a scatter-sum (fused gather -> product -> scatter).

An operand may be a *column selection* of the tensor passed in its slot (``CorePlan.columns``):
operand column c is tensor column ``columns[c]``, and as the output the operand is summed into
those columns of a zero tensor, the gradient of the selection, so the symmetry holds. A tensor
product's features in e3nn's ``mul_ir`` layout are read and written this way in the core's
``ir_mul`` order: the cpu backend selects inside its kernel, the others around it.

The compiled backends run as the operator ``torch.ops.sciml.tp_core`` (``sciml.ops.library``):
"cpu" on CPU tensors, "cuda" and "triton" on CUDA tensors; its autograd formula is the same
operator with another output slot. Pure-Python backends (``torch``, and Triton's interpreter on
the CPU) are functions ``(plan, operands, rowmaps, out_slot, out_rows, num_terms) -> Tensor``
registered with :func:`register_core_backend`; they must not track gradients themselves.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

from sciml.ops import library
from sciml.ops.tracing import built_outside_tracing

INDEX_COLUMN = {0: 0, 1: 1, 3: 2}  # slot -> column of ``indices``; slot s has no component index


class PathRow(NamedTuple):
    """One path of a :class:`CorePlan`: one row of its int64 ``paths`` table, columns in this order
    (the layout the compiled kernels read: ``PATH_COLUMNS`` in ``cpu_kernel.c``)."""

    off_a: int  # first column of the path's block in operand a (likewise b, s, o)
    off_b: int
    off_s: int
    off_o: int
    bc_a: int  # 1 where the operand is broadcast (one channel shared by all u), else 0
    bc_b: int
    bc_s: int
    bc_o: int
    channels: int  # U, the channels of the path
    begin: int  # the path's Clebsch-Gordan entries are rows begin..end-1 of ``indices``/``values``
    end: int

    def offset(self, slot: int) -> int:
        """First column of the path's block in operand ``slot`` (0..3 = a, b, s, o)."""
        return (self.off_a, self.off_b, self.off_s, self.off_o)[slot]

    def broadcast(self, slot: int) -> bool:
        """Whether operand ``slot`` is broadcast over the path's channels."""
        return bool((self.bc_a, self.bc_b, self.bc_s, self.bc_o)[slot])


PATH_COLUMNS = PathRow._fields
Table = TypeVar("Table", np.ndarray, torch.Tensor)


def path_table(rows: Sequence[PathRow]) -> np.ndarray:
    """The int64 (P, len(PATH_COLUMNS)) ``paths`` table of a plan from its rows."""
    return np.asarray(rows, dtype=np.int64).reshape(-1, len(PATH_COLUMNS))


def path_column(paths: Table, name: str) -> Table:
    """Column ``name`` (a :class:`PathRow` field) of a ``paths`` table (numpy or torch), (P,)."""
    return paths[:, PATH_COLUMNS.index(name)]


def offset_column(slot: int) -> str:
    """The :class:`PathRow` field of operand ``slot``'s block offset."""
    return PATH_COLUMNS[slot]


def broadcast_column(slot: int) -> str:
    """The :class:`PathRow` field of operand ``slot``'s broadcast flag."""
    return PATH_COLUMNS[4 + slot]


@dataclass
class CorePlan:
    """Static description of one sparse core: operand widths, paths and Clebsch-Gordan entries.

    ``paths`` is int64 (P, 11), one :class:`PathRow` per row (:meth:`path_rows`); ``indices`` int64 (n, 3) holds
    each entry's component index in slots a, b, o; ``values`` float64 (n,) the coefficients
    (Clebsch-Gordan value times the path's normalisation). ``widths`` are the operands' widths;
    ``columns`` per slot None (the tensor passed is the operand) or the int64 (widths[slot],)
    columns of the tensor that make the operand (its column selection, see the module docstring).
    """

    widths: Tuple[int, int, int, int]
    paths: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    columns: Tuple[Optional[np.ndarray], ...] = (None, None, None, None)
    _device_cache: Dict = field(default_factory=dict, repr=False, compare=False)

    def path_rows(self) -> Tuple[PathRow, ...]:
        """The rows of ``paths`` as :class:`PathRow` (cached)."""
        if "rows" not in self._device_cache:
            self._device_cache["rows"] = tuple(PathRow(*(int(v) for v in row)) for row in self.paths)
        return self._device_cache["rows"]

    def selecting(self, columns: Sequence[Optional[np.ndarray]]) -> "CorePlan":
        """This plan with its operands read through the column selections ``columns`` (per slot)."""
        return CorePlan(self.widths, self.paths, self.indices, self.values, tuple(columns))

    @property
    def selects(self) -> bool:
        """Whether some operand is a column selection."""
        return any(columns is not None for columns in self.columns)

    def without_selections(self) -> "CorePlan":
        """The plan on the selected operands themselves (cached, so its kernels are built once)."""
        if "plain" not in self._device_cache:
            self._device_cache["plain"] = CorePlan(self.widths, self.paths, self.indices, self.values)
        return self._device_cache["plain"]

    @built_outside_tracing
    def tensors(self, device: torch.device) -> tuple:
        """(paths, indices, values) as torch tensors on ``device`` (cached)."""
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = (
                torch.as_tensor(self.paths, dtype=torch.int64, device=device),
                torch.as_tensor(self.indices, dtype=torch.int64, device=device),
                torch.as_tensor(self.values, dtype=torch.float64, device=device),
            )
        return self._device_cache[key]

    @built_outside_tracing
    def addresses(self, slot: int, path: int, device: torch.device) -> torch.Tensor:
        """Column of every (entry, channel) of ``path`` in operand ``slot``: int64 (n_entries, U)."""
        key = ("addr", slot, path, str(device))
        if key not in self._device_cache:
            row = self.path_rows()[path]
            begin, end, channels = row.begin, row.end, row.channels
            broadcast = row.broadcast(slot)
            component = (
                self.indices[begin:end, INDEX_COLUMN[slot]] if slot in INDEX_COLUMN else np.zeros(end - begin, np.int64)
            )
            stride = 1 if broadcast else channels
            channel = np.zeros(channels, np.int64) if broadcast else np.arange(channels)
            columns = row.offset(slot) + component[:, None] * stride + channel[None, :]
            self._device_cache[key] = torch.as_tensor(columns, dtype=torch.int64, device=device)
        return self._device_cache[key]


_PLANS: Dict[int, tuple] = {}  # id of a plan's CPU paths tensor -> (weak reference to it, plan)


def plan_from_tables(tables: Sequence[torch.Tensor], widths: Sequence[int]) -> CorePlan:
    """The plan whose (paths, indices, values) tensors are ``tables`` (as built by ``CorePlan.tensors``
    on the CPU and passed to the operator), recovered once per plan."""
    paths = tables[0]
    known = _PLANS.get(id(paths))
    if known is None or known[0]() is not paths:
        plan = CorePlan(tuple(int(w) for w in widths), paths.numpy(), tables[1].numpy(), tables[2].numpy())
        known = _PLANS[id(paths)] = (weakref.ref(paths, lambda _, key=id(paths): _PLANS.pop(key, None)), plan)
    return known[1]


CoreBackend = Callable[..., torch.Tensor]
_CORE_BACKENDS: Dict[str, CoreBackend] = {}


def register_core_backend(name: str, function: CoreBackend) -> None:
    """Make ``function`` available as the sparse core of backend ``name``."""
    _CORE_BACKENDS[name] = function


def core_backend(name: str) -> CoreBackend:
    if name not in _CORE_BACKENDS:
        raise ValueError(f"tensor-product core backend {name!r} is not available; have {sorted(_CORE_BACKENDS)}")
    return _CORE_BACKENDS[name]


def _row(rowmap: Optional[torch.Tensor], num_terms: int, device: torch.device) -> torch.Tensor:
    return rowmap if rowmap is not None else torch.arange(num_terms, device=device)


def torch_core(
    plan: CorePlan,
    operands: Sequence[Optional[torch.Tensor]],
    rowmaps: Sequence[Optional[torch.Tensor]],
    out_slot: int,
    out_rows: int,
    num_terms: int,
) -> torch.Tensor:
    """Portable core in plain torch ops (gather, multiply, index_add); used where no kernel is built."""
    reference = next(op for op in operands if op is not None)
    device, dtype = reference.device, reference.dtype
    width = plan.widths[out_slot]
    out = torch.zeros(out_rows * width, dtype=dtype, device=device)
    _, _, values = plan.tensors(device)
    out_row = _row(rowmaps[out_slot], num_terms, device)
    inputs = [slot for slot in range(4) if slot != out_slot]
    for path, row in enumerate(plan.path_rows()):
        begin, end = row.begin, row.end
        if end == begin:
            continue
        product = values[begin:end].to(dtype)[None, :, None]
        for slot in inputs:
            rows = operands[slot][_row(rowmaps[slot], num_terms, device)]
            product = product * rows[:, plan.addresses(slot, path, device)]
        columns = plan.addresses(out_slot, path, device)
        product = product.expand(num_terms, *columns.shape)
        flat = (out_row[:, None, None] * width + columns[None]).reshape(-1)
        out.index_add_(0, flat, product.reshape(-1))
    return out.view(out_rows, width)


register_core_backend("torch", torch_core)


class _SparseCore(torch.autograd.Function):
    """Autograd of the Python backends: the gradient for an input slot is the core with that slot
    as the output (setup_context form, so it also runs under ``torch.func`` transforms)."""

    @staticmethod
    def forward(config, *inputs):
        plan, rowmaps, out_slot, out_rows, num_terms, backend = config
        operands = [None] * 4
        for slot, tensor in zip([slot for slot in range(4) if slot != out_slot], inputs):
            operands[slot] = tensor.contiguous()
        return core_backend(backend)(plan, operands, rowmaps, out_slot, out_rows, num_terms)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        config, *tensors = inputs
        ctx.config = config
        ctx.slots = [slot for slot in range(4) if slot != config[2]]
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx, grad_out):
        plan, rowmaps, out_slot, out_rows, num_terms, backend = ctx.config
        inputs = ctx.saved_tensors
        operands = [None] * 4
        for slot, tensor in zip(ctx.slots, inputs):
            operands[slot] = tensor
        operands[out_slot] = grad_out.contiguous()
        grads = []
        for position, slot in enumerate(ctx.slots):
            if not ctx.needs_input_grad[position + 1]:
                grads.append(None)
                continue
            others = list(operands)
            others[slot] = None
            grads.append(sparse_core(plan, others, rowmaps, slot, inputs[position].shape[0], num_terms, backend))
        return (None, *grads)


def runs_as_operator(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` runs as ``torch.ops.sciml.tp_core`` on ``device`` (else in Python)."""
    return backend == "cpu" or (backend in ("cuda", "triton") and device.type == "cuda")


def sparse_core(
    plan: CorePlan,
    operands: Sequence[Optional[torch.Tensor]],
    rowmaps: Sequence[Optional[torch.Tensor]],
    out_slot: int,
    out_rows: int,
    num_terms: int,
    backend: str = "torch",
    out_width: Optional[int] = None,
) -> torch.Tensor:
    """Differentiable sparse core (see the module docstring); returns (out_rows, widths[out_slot]),
    or (out_rows, out_width) where the output slot is a column selection of ``out_width`` columns.

    ``operands`` has four entries in slot order with ``None`` at ``out_slot``; ``rowmaps`` four int64
    (num_terms,) row maps or None (identity).
    """
    if plan.selects and backend != "cpu":
        return _around_selections(plan, operands, rowmaps, out_slot, out_rows, num_terms, backend, out_width)
    reference = next(op for op in operands if op is not None)
    if runs_as_operator(backend, reference.device):
        from sciml.ops.tensor_product import cpu

        differentiable = torch.is_grad_enabled() and any(op is not None and op.requires_grad for op in operands)
        # other dtypes run in float32: the operator's autocast rule casts them
        dtype = reference.dtype if reference.dtype in (torch.float32, torch.float64) else torch.float32
        kernels = cpu.kernels(plan, dtype, num_terms, out_slot, differentiable) if backend == "cpu" else ""
        widths = [plan.widths[slot] if op is None else op.shape[1] for slot, op in enumerate(operands)]
        if plan.columns[out_slot] is not None:
            widths[out_slot] = out_width
        return library.call("tp_core", *operands, *rowmaps, cpu.tables(plan), widths, kernels, out_slot,
                                       out_rows, num_terms, backend)
    slots = [slot for slot in range(4) if slot != out_slot]
    config = (plan, tuple(rowmaps), out_slot, out_rows, num_terms, backend)
    return _SparseCore.apply(config, *[operands[slot] for slot in slots])


def _around_selections(plan: CorePlan, operands, rowmaps, out_slot: int, out_rows: int, num_terms: int, backend: str,
                       out_width: Optional[int]) -> torch.Tensor:
    """``sparse_core`` of a plan with column selections on a backend that takes operands as they
    are: the input selections gathered before the core, the output summed into its columns after."""
    selected = [op if op is None or plan.columns[slot] is None else op.index_select(1, _column_index(plan, slot, op.device))
                for slot, op in enumerate(operands)]
    out = sparse_core(plan.without_selections(), selected, rowmaps, out_slot, out_rows, num_terms, backend)
    if plan.columns[out_slot] is None:
        return out
    inverse = _column_index(plan, out_slot, out.device, inverse=True)
    if inverse is not None and len(inverse) == out_width:  # a permutation: a gather, no atomics
        return out.index_select(1, inverse)
    return out.new_zeros(out.shape[0], out_width).index_add(1, _column_index(plan, out_slot, out.device), out)


@built_outside_tracing
def _column_index(plan: CorePlan, slot: int, device: torch.device, inverse: bool = False) -> Optional[torch.Tensor]:
    """The column selection of ``slot`` as an int64 tensor, or with ``inverse`` its inverse
    permutation (None where it permutes no range 0..n-1); cached."""
    key = ("columns", slot, inverse, str(device))
    if key not in plan._device_cache:
        columns = plan.columns[slot]
        if inverse:
            permutes = np.array_equal(np.sort(columns), np.arange(len(columns)))
            columns = np.argsort(columns) if permutes else None
        plan._device_cache[key] = None if columns is None else torch.as_tensor(columns, dtype=torch.int64, device=device)
    return plan._device_cache[key]


def sorted_rows(rowmap: Optional[torch.Tensor], out_rows: int, num_terms: int, device: Optional[torch.device] = None) -> tuple:
    """CSR view of the terms grouped by output row: (ptr (out_rows+1,), order (num_terms,) or None).

    Terms of row n are ``order[ptr[n]:ptr[n+1]]`` in increasing term order (a stable sort), so
    kernels can sum each row without atomics, deterministically. ``order`` is None for the identity.
    """
    if rowmap is None:
        return torch.arange(num_terms + 1, dtype=torch.int64, device=device), None
    order = torch.sort(rowmap, stable=True).indices
    # (bincount would read the largest row back to the host; index_add keeps the GPU running)
    counts = torch.zeros(out_rows, dtype=torch.int64, device=rowmap.device).index_add_(0, rowmap, torch.ones_like(rowmap))
    ptr = torch.zeros(out_rows + 1, dtype=torch.int64, device=rowmap.device)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr, order

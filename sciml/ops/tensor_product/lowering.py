"""Lowering of a tensor product onto the sparse core (see ``core.py``) plus dense channel mixing.

Each instruction becomes one core path; what the core cannot express directly is done by dense
torch ops around it:

- ``uvu`` with mul2 = 1, ``uuu``, ``uvuv``: straight onto the core, per-sample or shared weights as
  the core's per-channel scale ``s`` (fused, never a separate pass);
- ``uvu``/``uvv`` with both multiplicities > 1: the weights are first contracted with the input
  whose channel is summed (one small batched matmul), then the core runs channelwise;
- ``uvw`` with one multiplicity 1 (e.g. features x spherical harmonics): the weights first mix the
  other input's channels into output channels (shared weights: one GEMM per x1 irrep for all the
  paths reading it, at matmul speed; per-sample weights of mul2 = 1 paths: one more core call,
  reading the weights once), then the core runs channelwise straight into the output, reading
  the mixed blocks in place through a column selection;
- ``uuw`` and ``uvw`` with both multiplicities > 1: the core computes the unweighted channelwise
  product into temporary blocks, which one GEMM per output irrep mixes into the output channels;
- outer products of channels (``uvuv``, ``uvw`` with both multiplicities > 1) expand the channel
  index of the inputs, as e3nn does; the pair modes (``uvu<v``, ``u<vw``) expand it to the pairs
  u < v only, then run as ``uvuv`` / ``uvw``.

All paths of one product go into a single core call, and the output slot sums paths sharing an
output irrep. The core works in the ``ir_mul`` layout (so its inner loop runs over contiguous
channels); an operand that is a column selection of one input (e.g. x1 in e3nn's ``mul_ir``
layout), and the output when no channel mixing follows, are read and written through their
column selections by the core itself (``CorePlan.columns``), otherwise gathered and converted back
by separate column permutations.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from sciml.ops import library
from sciml.ops.cbuild import kernel_name
from sciml.ops.tracing import built_outside_tracing
from sciml.ops.irreps import clebsch_gordan
from sciml.ops.tensor_product.core import CorePlan, PathRow, path_table, sparse_core
from sciml.ops.tensor_product.instructions import Path

A, B, S, O = 0, 1, 2, 3


def ir_mul_columns(sl: slice, mul: int, dim: int) -> np.ndarray:
    """Columns of block ``sl`` (mul copies of a dim-component irrep, mul_ir order) in ir_mul order."""
    return (sl.start + np.arange(mul)[None, :] * dim + np.arange(dim)[:, None]).reshape(-1)


_GATHER_SOURCE = """
#include <stdint.h>
#define DEFINE_GATHER(NAME, REAL)                                                              \\
void NAME(int64_t rows, int64_t cols, const REAL *src, const int64_t *columns, REAL *dst, int threads) { \\
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                          \\
    for (int64_t r = 0; r < rows; ++r)                                                         \\
        for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = src[r * cols + columns[c]];     \\
}
DEFINE_GATHER(sciml_gather_f32, float)
DEFINE_GATHER(sciml_gather_f64, double)
"""
_gathers: dict = {}


def _gather_kernel(dtype: torch.dtype) -> Optional[str]:
    """"path:symbol" of the compiled column gather for ``dtype``, or None where it cannot be used."""
    suffix = {torch.float32: "f32", torch.float64: "f64"}.get(dtype)
    if suffix is None:
        return None
    if suffix not in _gathers:
        try:
            _gathers[suffix] = kernel_name(_GATHER_SOURCE, f"sciml_gather_{suffix}") if library.available() else None
        except RuntimeError:
            _gathers[suffix] = None
    return _gathers[suffix]


class Columns:
    """A fixed selection ``x[:, columns]`` of a tensor's columns, analysed once at construction.

    Run-time calls read only Python facts and cached index tensors (no numpy), so dynamo and
    make_fx see plain constants. The identity costs nothing; a permutation of all columns on the
    CPU is the operator ``sciml::permute_columns`` (one pass of a compiled loop; torch's
    ``index_select`` along dim 1 is several times slower), whose gradient is the inverse permutation.
    """

    def __init__(self, columns: np.ndarray) -> None:
        self.columns = np.asarray(columns, dtype=np.int64)
        self.size = len(self.columns)
        self.is_range = bool(np.array_equal(self.columns, np.arange(self.size)))
        self.is_permutation = bool(np.array_equal(np.sort(self.columns), np.arange(self.size)))
        self._tensors: dict = {}

    @built_outside_tracing
    def _index(self, device: torch.device) -> tuple:
        key = str(device)
        if key not in self._tensors:
            index = torch.as_tensor(self.columns, dtype=torch.int64, device=device)
            inverse = torch.as_tensor(np.argsort(self.columns), dtype=torch.int64, device=device) if self.is_permutation else None
            self._tensors[key] = (index, inverse)
        return self._tensors[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, width) -> (rows, len(columns))."""
        whole = self.size == x.shape[1]
        if whole and self.is_range:
            return x
        index, inverse = self._index(x.device)
        kernel = _gather_kernel(x.dtype) if whole and self.is_permutation and x.device.type == "cpu" else None
        if kernel is not None:
            return library.call("permute_columns", x, index, inverse, kernel)
        return x.index_select(1, index)

    def __getstate__(self) -> dict:
        return {"columns": self.columns}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["columns"])


def _entries(path: Path, swap: bool) -> tuple:
    cg = clebsch_gordan(path.l1, path.l2, path.l3)
    i, j, k = np.nonzero(cg)
    values = cg[i, j, k] * path.coefficient
    index = np.stack([j, i, k] if swap else [i, j, k], axis=1)
    return index.astype(np.int64), values


def _premixes(path: Path) -> bool:
    """Whether the weights of ``path`` mix x1's channels before the core (uvw with mul2 = 1)."""
    return path.mode == "uvw" and path.mul2 == 1 and 0 not in (path.mul1, path.mul_out)


def _premix_layout(paths: Sequence[Path], shared: bool) -> tuple:
    """(groups, columns) of the weight-mixed x1 blocks (``LoweredTensorProduct._premixed``).

    ``groups``: the premixing paths (``_premixes``) grouped by the x1 irrep they read, in order.
    ``columns``: id(path) -> int64 (d1 mul_out,) columns, in the path's ir_mul block order (i, w), of
    the premixed tensor. Its layout: per group, with shared weights the output of one GEMM, rows
    (i) of columns (path, w), so (i, p, w) at i sum_p W_p + (W of the paths before p) + w; with
    per-sample weights one (i, w) block per path, the paths one after another.
    """
    groups: dict = {}
    for path in paths:
        if _premixes(path):
            groups.setdefault(path.i_in1, []).append(path)
    columns, start = {}, 0
    for group in groups.values():
        d1, width = 2 * group[0].l1 + 1, sum(p.mul_out for p in group)
        before = 0
        for p in group:
            if shared:
                block = start + np.arange(d1)[:, None] * width + before + np.arange(p.mul_out)[None, :]
            else:
                block = start + before * d1 + np.arange(d1 * p.mul_out)
            columns[id(p)] = block.reshape(-1).astype(np.int64)
            before += p.mul_out
        start += d1 * width
    return list(groups.values()), columns


class _IrrepMix(torch.autograd.Function):
    """Channel mixing of several irreps by shared weights, written straight into one tensor.

    ``x`` (Z, sum_g d_g U_g) holds irrep g's components in ir_mul order ((i, u) at
    start_g + i U_g + u); ``weights[g]`` is (U_g, N_g). The output (Z, sum_g d_g N_g) holds
    out[z, off_g + i N_g + n] = sum_u x[z, start_g + i U_g + u] W_g[u, n]: per irrep and component
    one GEMM (Z, U_g) x (U_g, N_g) on strided views, written in place, so the blocks are never
    joined or copied; the backward reads the output gradient in place the same way. Its formulas
    are plain differentiable torch ops, so higher derivatives follow.
    """

    @staticmethod
    def _views(components: tuple, weights: tuple):
        """Per (irrep g, component i): (input column slice, output column slice, g)."""
        start = offset = 0
        for g, (dim, weight) in enumerate(zip(components, weights)):
            mul, width = weight.shape
            for i in range(dim):
                yield slice(start + i * mul, start + (i + 1) * mul), slice(offset + i * width, offset + (i + 1) * width), g
            start, offset = start + dim * mul, offset + dim * width

    @staticmethod
    def forward(components: tuple, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        width = sum(dim * weight.shape[1] for dim, weight in zip(components, weights))
        out = x.new_empty(x.shape[0], width)
        for source, target, g in _IrrepMix._views(components, weights):
            torch.mm(x[:, source], weights[g], out=out[:, target])
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        components, x, *weights = inputs
        ctx.components = components
        ctx.save_for_backward(x, *weights)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *weights = ctx.saved_tensors
        grad_x, grad_w = [], [None] * len(weights)
        for source, target, g in _IrrepMix._views(ctx.components, weights):
            piece = grad[:, target]
            if ctx.needs_input_grad[1]:
                grad_x.append(torch.mm(piece, weights[g].t()))
            if ctx.needs_input_grad[2 + g]:
                term = torch.mm(x[:, source].t(), piece)
                grad_w[g] = term if grad_w[g] is None else grad_w[g] + term
        return None, torch.cat(grad_x, dim=1) if grad_x else None, *grad_w


class _Operand:
    """Blocks of one core operand: column gathers from an input (deduplicated) or derived tensors."""

    def __init__(self) -> None:
        self.blocks: List[tuple] = []  # ("gather", source, columns) or ("derived", make)
        self.origins: set = set()
        self.width = 0
        self._gathered: dict = {}

    def gather(self, source: str, columns: np.ndarray) -> int:
        key = (source, columns.tobytes())
        if key not in self._gathered:
            self._gathered[key] = self.width
            self.blocks.append(("gather", source, columns))
            self.origins.add(source)
            self.width += len(columns)
        return self._gathered[key]

    def derived(self, width: int, make: Callable, origin: str) -> int:
        offset = self.width
        self.blocks.append(("derived", make))
        self.origins.add(origin)
        self.width += width
        return offset

    def finish(self) -> None:
        """Fix the build steps: consecutive gathers from one source merge into one selection."""
        self.steps: List[tuple] = []  # ("select", source, Columns) or ("derived", make)
        pending = None
        for block in self.blocks + [("end",)]:
            if block[0] == "gather" and pending is not None and pending[0] == block[1]:
                pending[1].append(block[2])
                continue
            if pending is not None:
                self.steps.append(("select", pending[0], Columns(np.concatenate(pending[1]))))
                pending = None
            if block[0] == "gather":
                pending = (block[1], [block[2]])
            elif block[0] == "derived":
                self.steps.append(block)

    def selection(self) -> Optional[tuple]:
        """(source, columns) where the operand is nothing but a column selection of one input, so
        the core can read the input through it (``CorePlan.columns``); else None."""
        if len(self.steps) == 1 and self.steps[0][0] == "select":
            return self.steps[0][1], self.steps[0][2].columns
        return None

    def build(self, env: dict) -> torch.Tensor:
        pieces = []
        for step in self.steps:
            if step[0] == "select":
                pieces.append(step[2](env[step[1]]))
            else:
                made = step[1](env)
                pieces.extend(made if isinstance(made, list) else [made])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


class LoweredTensorProduct:
    """A tensor product as one sparse-core call plus dense channel mixing.

    Args:
        paths: normalised instructions (``instructions.build_paths``).
        dim_out: flat output size.
        out_blocks: (slice, mul, dim) of every output irrep.
        shared_weights: weights are (1, weight_numel) rather than (Z, weight_numel).
    """

    def __init__(self, paths: Sequence[Path], dim_out: int, out_blocks: Sequence[tuple], shared_weights: bool):
        self._arguments = (list(paths), dim_out, list(out_blocks), shared_weights)
        self.dim_out = dim_out
        self.out_blocks = list(out_blocks)
        self.shared = shared_weights
        self.mixers: dict = {}  # i_out -> [(temp offset, channels, path)] for uvw/uuw paths
        self._premix_plan: Optional[CorePlan] = None  # per-sample weight mixing (``_premix_core``), built on first use
        self.premix_groups, premixed = _premix_layout(paths, shared_weights)
        self._premix_x1 = Columns(np.concatenate(
            [ir_mul_columns(g[0].slice1, g[0].mul1, 2 * g[0].l1 + 1) for g in self.premix_groups] or [np.zeros(0, np.int64)]))
        operand = [_Operand() for _ in range(3)]
        out_offsets = np.cumsum([0] + [mul * dim for _, mul, dim in self.out_blocks])
        self.out_columns = np.concatenate(
            [ir_mul_columns(slice(int(out_offsets[i]), None), mul, dim) for i, (_, mul, dim) in enumerate(self.out_blocks)]
            or [np.zeros(0, np.int64)]
        )
        self.out_back = Columns(np.argsort(self.out_columns))  # ir_mul buffer -> mul_ir output
        out_width = dim_out
        rows, indices, values = [], [], []
        one = np.zeros(1, np.int64)

        for path in paths:
            d1, d2, d3 = 2 * path.l1 + 1, 2 * path.l2 + 1, 2 * path.l3 + 1
            u_mul, v_mul = path.mul1, path.mul2
            if 0 in (u_mul, v_mul, path.mul_out, *path.weight_shape):
                continue
            cols1 = ir_mul_columns(path.slice1, u_mul, d1)
            cols2 = ir_mul_columns(path.slice2, v_mul, d2)
            weight_cols = np.arange(path.weight_slice.start, path.weight_slice.stop) if path.has_weight else None
            swap, bc_a, bc_b, bc_o = False, 0, 0, 0
            mode, out_offset = path.mode, int(out_offsets[path.i_out])
            scale = None  # per-channel scale columns in the weights, or None for 1
            if mode == "uuu" or (mode == "uvu" and v_mul == 1):
                channels = u_mul
                off_a = operand[A].gather("x1", cols1)
                if mode == "uuu":
                    off_b = operand[B].gather("x2", cols2)
                else:
                    off_b, bc_b = operand[B].gather("x2", cols2), 1
                scale, off_o = weight_cols, out_offset
            elif mode == "uvv" and u_mul == 1:
                channels, swap = v_mul, True
                off_a = operand[A].gather("x2", cols2)
                off_b, bc_b = operand[B].gather("x1", cols1), 1
                scale, off_o = weight_cols, out_offset
            elif mode == "uvu":
                channels, off_o = u_mul, out_offset
                off_a = operand[A].gather("x1", cols1)
                if path.has_weight:  # b'[z, j, u] = sum_v w[z, u, v] x2[z, v, j]
                    make = self._mixed("x2", cols2, weight_cols, "uv,zvj->zju", v_mul, d2, (u_mul, v_mul))
                    off_b = operand[B].derived(d2 * u_mul, make, "x2")
                else:
                    off_b, bc_b = operand[B].derived(d2, self._summed("x2", cols2, v_mul, d2), "x2"), 1
            elif mode == "uvv":
                channels, swap, off_o = v_mul, True, out_offset
                off_a = operand[A].gather("x2", cols2)
                if path.has_weight:  # a'[z, i, v] = sum_u w[z, u, v] x1[z, u, i]
                    make = self._mixed("x1", cols1, weight_cols, "uv,zui->ziv", u_mul, d1, (u_mul, v_mul))
                    off_b = operand[B].derived(d1 * v_mul, make, "x1")
                else:
                    off_b, bc_b = operand[B].derived(d1, self._summed("x1", cols1, u_mul, d1), "x1"), 1
            elif mode == "uvw" and v_mul == 1:  # weights first: a'[z, i, w] = sum_u W[u, w] x1[z, u, i]
                channels, off_o = path.mul_out, out_offset
                off_a = operand[A].gather("premixed", premixed[id(path)])
                off_b, bc_b = operand[B].gather("x2", cols2), 1
            elif mode == "uvw" and u_mul == 1:  # a'[z, j, w] = sum_v W[v, w] x2[z, v, j]; x1 broadcast
                channels, swap, off_o = path.mul_out, True, out_offset
                make = self._mixed("x2", cols2, weight_cols, "vw,zvj->zjw", v_mul, d2, (v_mul, path.mul_out))
                off_a = operand[A].derived(d2 * channels, make, "x2")
                off_b, bc_b = operand[B].gather("x1", cols1), 1
            elif mode in ("uvuv", "uvw"):
                channels = u_mul * v_mul
                if u_mul == 1:
                    off_a, bc_a = operand[A].gather("x1", cols1), 1
                else:  # channel (u, v) of the outer product reads x1 channel u
                    off_a = operand[A].gather("x1", np.repeat(cols1.reshape(d1, u_mul), v_mul, axis=1).reshape(-1))
                if v_mul == 1:
                    off_b, bc_b = operand[B].gather("x2", cols2), 1
                else:  # ... and x2 channel v
                    off_b = operand[B].gather("x2", np.tile(cols2.reshape(d2, v_mul), (1, u_mul)).reshape(-1))
                if mode == "uvuv":
                    scale, off_o = weight_cols, out_offset
                else:
                    off_o, out_width = out_width, out_width + d3 * channels
                    self.mixers.setdefault(path.i_out, []).append((off_o, channels, path))
            elif mode in ("uvu<v", "u<vw"):  # channel q = (u, v), u < v, reads x1 channel u and x2 channel v
                first, second = np.triu_indices(u_mul, 1)
                channels = len(first)
                off_a = operand[A].gather("x1", cols1.reshape(d1, u_mul)[:, first].reshape(-1))
                off_b = operand[B].gather("x2", cols2.reshape(d2, v_mul)[:, second].reshape(-1))
                if mode == "uvu<v":
                    scale, off_o = weight_cols, out_offset
                else:
                    off_o, out_width = out_width, out_width + d3 * channels
                    self.mixers.setdefault(path.i_out, []).append((off_o, channels, path))
            else:  # uuw: channelwise product, then mixed into the output channels
                channels = u_mul
                off_a = operand[A].gather("x1", cols1)
                off_b = operand[B].gather("x2", cols2)
                if path.has_weight:
                    off_o, out_width = out_width, out_width + d3 * channels
                    self.mixers.setdefault(path.i_out, []).append((off_o, channels, path))
                else:  # unweighted uuw sums the channels into mul_out = 1
                    off_o, bc_o = out_offset, 1
            if scale is None:
                off_s, bc_s = operand[S].gather("ones", one), 1
            else:
                off_s, bc_s = operand[S].gather("w", scale), 0
            index, value = _entries(path, swap)
            begin = sum(len(v) for v in values)
            indices.append(index)
            values.append(value)
            rows.append(PathRow(off_a, off_b, off_s, off_o, bc_a, bc_b, bc_s, bc_o, channels, begin, begin + len(value)))

        self.operands = operand
        for block in operand:
            block.finish()
        self.mix_columns = {  # per mixed output irrep: the paths' product blocks, component-major
            i_out: Columns(np.concatenate([np.concatenate([offset + k * channels + np.arange(channels) for offset, channels, _ in parts])
                                           for k in range(2 * parts[0][2].l3 + 1)]))
            for i_out, parts in self.mixers.items()
        }
        # the fused gather reads x1 through a rowmap only when operand a holds nothing but x1 columns
        self.fused_gather = operand[A].origins == {"x1"} and "x1" not in operand[B].origins and not self.mixers
        self.plan = CorePlan(
            widths=(operand[A].width, operand[B].width, operand[S].width, out_width),
            paths=path_table(rows),
            indices=np.concatenate(indices) if indices else np.zeros((0, 3), np.int64),
            values=np.concatenate(values) if values else np.zeros(0),
        )
        self.selections = [block.selection() for block in operand]  # per input slot: (source, columns) or None
        out_selection = self.out_columns if not self.mixers and self.out_columns.size else None
        columns = [selected[1] if selected else None for selected in self.selections] + [out_selection]
        self.selecting_plan = self.plan.selecting(columns) if any(c is not None for c in columns) else self.plan

    def __getstate__(self) -> dict:
        """Pickled (and deep-copied) as its construction arguments: the closures, caches and
        compiled kernels are rebuilt, never serialised."""
        return {"arguments": self._arguments}

    def __setstate__(self, state: dict) -> None:
        self.__init__(*state["arguments"])

    # ---- run-time builders of derived blocks and mixers (closures over static shapes) ----
    def _mixed(self, source: str, columns: np.ndarray, weight_cols: np.ndarray, equation: str, mul: int, dim: int, shape: tuple) -> Callable:
        selection = Columns(columns)
        start = int(weight_cols[0])  # a Python int now: numpy read at call time would be traced by dynamo

        def make(env):
            x = selection(env[source]).reshape(-1, dim, mul).transpose(1, 2)  # (Z, mul, dim)
            w = self._weight_block(env, start)
            if self.shared:
                mixed = torch.einsum(equation, w.reshape(shape), x)
            else:
                mixed = torch.einsum("z" + equation, w.reshape((-1,) + shape), x)
            return mixed.reshape(x.shape[0], -1)

        return make

    def _premixed(self, env: dict) -> torch.Tensor:
        """The weight-mixed x1 blocks of every uvw path with mul2 = 1, (Z, width) in the layout of
        ``_premix_layout``: a'[z, i, w] = sum_u W[u, w] x1[z, u, i] per path.

        Shared weights: x1's irreps read by such paths go to ir_mul in one column permutation, and
        each irrep meets the weights of all its paths at once (``_IrrepMix``). Per-sample weights:
        one sparse core (``_premix_core``) reads the weights once, in place.
        """
        if not self.shared:
            rows = env["x1"].shape[0]
            operands = [env["w"], env["x1"], env["ones"], None]
            return sparse_core(self._premix_core(), operands, [None] * 4, O, rows, rows, env["backend"])
        w = env["w"][0]
        weights = [torch.cat([w[p.weight_slice].view(group[0].mul1, p.mul_out) for p in group], dim=1)
                   for group in self.premix_groups]
        components = tuple(2 * group[0].l1 + 1 for group in self.premix_groups)
        return _IrrepMix.apply(components, self._premix_x1(env["x1"]), *weights)

    def _premix_core(self) -> CorePlan:
        """The plan of the per-sample weight mixing of every uvw path with mul2 = 1, built once:
        out[z, block_p + i W + w] = sum_u w[z, off_p + u W + w] x1[z, u, i], one core path per uvw
        path with channels w (slot a the weights as given, b the x1 irreps it reads, s one), blocks
        in the order of ``_premix_layout``."""
        if self._premix_plan is None:
            x1_columns, rows, indices, out_width, begin = [], [], [], 0, 0
            for group in self.premix_groups:
                first = group[0]
                d1 = 2 * first.l1 + 1
                x1_offset = sum(len(c) for c in x1_columns)
                x1_columns.append(np.arange(first.slice1.start, first.slice1.stop))
                u, i = np.meshgrid(np.arange(first.mul1), np.arange(d1), indexing="ij")
                entries = np.stack([u.reshape(-1), (u * d1 + i).reshape(-1), i.reshape(-1)], axis=1)  # (u, (u, i), i)
                for p in group:
                    indices.append(entries)
                    rows.append(PathRow(off_a=p.weight_slice.start, off_b=x1_offset, off_s=0, off_o=out_width, bc_a=0, bc_b=1, bc_s=1,
                                        bc_o=0, channels=p.mul_out, begin=begin, end=begin + len(entries)))
                    out_width, begin = out_width + d1 * p.mul_out, begin + len(entries)
            weight_numel = max((p.weight_slice.stop for p in self._arguments[0] if p.has_weight), default=0)
            selected = np.concatenate(x1_columns) if x1_columns else np.zeros(0, np.int64)
            self._premix_plan = CorePlan(
                widths=(weight_numel, len(selected), 1, out_width),
                paths=path_table(rows),
                indices=np.concatenate(indices) if indices else np.zeros((0, 3), np.int64),
                values=np.ones(begin),
            ).selecting([None, selected, None, None])
        return self._premix_plan

    def _weight_block(self, env: dict, start: int) -> torch.Tensor:
        """The weight columns of the path whose block starts at column ``start``.

        All blocks come from one ``split`` of the weights, made once per call: its backward
        concatenates the blocks' gradients, where slicing each block would zero-fill and copy a
        full-size gradient per path (costly for per-edge weights, Z x weight_numel).
        """
        if "w_blocks" not in env:
            w = env["w"]
            starts = sorted({p.weight_slice.start for p in self._arguments[0] if p.has_weight})
            bounds = starts + [w.shape[1]]
            sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
            if starts and starts[0] > 0:
                sizes, starts = [starts[0]] + sizes, [0] + starts
            env["w_blocks"] = dict(zip(starts, torch.split(w, sizes, dim=1)))
        return env["w_blocks"][start]

    def _summed(self, source: str, columns: np.ndarray, mul: int, dim: int) -> Callable:
        selection = Columns(columns)
        return lambda env: selection(env[source]).reshape(-1, dim, mul).sum(dim=2)

    def _mix(self, env: dict, out_buffer: torch.Tensor, i_out: int) -> torch.Tensor:
        """sum over the uvw/uuw paths into output irrep ``i_out`` of W_p^T temp_p, as one GEMM.

        The paths' channelwise products (ir_mul blocks of the core's output) are gathered into one
        (Z, d3, sum C_p) tensor and multiplied by their weights stacked into (sum C_p, mul_out)
        (per sample: a batched matmul). Returns the (Z, mul_out * d3) mul_ir update.
        """
        parts = self.mixers[i_out]
        d3 = 2 * parts[0][2].l3 + 1
        mul_out = parts[0][2].mul_out
        temp = self.mix_columns[i_out](out_buffer).reshape(out_buffer.shape[0], d3, -1)
        w = env["w"]
        if self.shared:
            stacked = torch.cat([w[0, p.weight_slice].reshape(channels, mul_out) for _, channels, p in parts])
            mixed = torch.matmul(temp, stacked)
        else:
            stacked = torch.cat([self._weight_block(env, p.weight_slice.start).reshape(-1, channels, mul_out)
                                 for _, channels, p in parts], dim=1)
            mixed = torch.bmm(temp, stacked)
        return mixed.transpose(1, 2).reshape(out_buffer.shape[0], mul_out * d3)

    def __call__(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        weights: torch.Tensor,
        backend: str,
        rowmap_x1: Optional[torch.Tensor] = None,
        rowmap_out: Optional[torch.Tensor] = None,
        out_rows: Optional[int] = None,
    ) -> torch.Tensor:
        """Tensor product of ``x1`` (rows picked by ``rowmap_x1``) and ``x2`` (Z, dim2) -> (rows, dim_out).

        ``weights`` is (1, weight_numel) when shared, else (Z, weight_numel). With ``rowmap_out`` the
        Z products are summed into ``out_rows`` output rows (a fused scatter).
        """
        num_terms = x2.shape[0]
        if rowmap_x1 is not None and not self.fused_gather:
            x1, rowmap_x1 = x1[rowmap_x1], None
        if rowmap_out is not None and self.mixers:
            raise ValueError("a fused scatter needs products without channel-mixing GEMMs (uvw/uuw paths)")
        rows = out_rows if rowmap_out is not None else num_terms
        if self.plan.paths.shape[0] == 0:
            return x1.new_zeros(rows, self.dim_out)
        env = {"x1": x1, "x2": x2, "w": weights, "ones": weights.new_ones(weights.shape[0], 1), "backend": backend}
        if self.premix_groups:
            env["premixed"] = self._premixed(env)
        tensors = [env[selected[0]] if selected else self.operands[slot].build(env) for slot, selected in enumerate(self.selections)]
        rowmap_s = torch.zeros(num_terms, dtype=torch.int64, device=x2.device) if self.shared else None
        rowmaps = [rowmap_x1, None, rowmap_s, rowmap_out]
        plan = self.selecting_plan
        out_buffer = sparse_core(plan, [*tensors, None], rowmaps, O, rows, num_terms, backend, self.dim_out)
        if plan.columns[O] is not None:
            return out_buffer
        out = self.out_back(out_buffer) if self.out_back.size else out_buffer[:, :0]
        if self.mixers:
            pieces = []
            for i_out, (sl, mul, dim) in enumerate(self.out_blocks):
                piece = out[:, sl]
                pieces.append(piece + self._mix(env, out_buffer, i_out) if i_out in self.mixers else piece)
            out = torch.cat(pieces, dim=1)
        return out

"""``Linear``: the equivariant linear map between irreps, equal to ``e3nn.o3.Linear``.

Each instruction ``(i_in, i_out)`` maps the ``mul_in`` copies of input irrep ``i_in`` onto the
``mul_out`` copies of output irrep ``i_out`` (same irrep) with a (mul_in, mul_out) weight matrix,
scaled by ``path_weight`` = 1/sqrt(fan-in): the summed input multiplicities of the instructions
into that output ("element"), or this instruction's times their number ("path"), times ``f_in``.
Scalar outputs may carry a bias. Weights are concatenated in instruction order, each block
row-major (e3nn's layout); with ``f_in``/``f_out`` the weights are (f_in, f_out, weight_numel) and
the features gain a channel axis mixed by the same map.
"""

from __future__ import annotations

import random
from math import prod
from typing import Iterator, List, NamedTuple, Optional, Sequence, Union

import e3nn
import torch
from torch import nn

from sciml.ops.irreps import IrrepsLike, parse_irreps
from sciml.ops.jit_trace import traced_call
from sciml.ops.tensor_product.instructions import InstructionError
from sciml.ops.tensor_product.module import WeightError


class Instruction(NamedTuple):
    """One weight block (e3nn's ``o3._linear.Instruction``); ``i_in = -1`` marks a bias."""

    i_in: int
    i_out: int
    path_shape: tuple
    path_weight: float


class Linear(nn.Module):
    """Equivariant linear layer, a drop-in for ``e3nn.o3.Linear`` (same arguments, weights, state dict).

    Args:
        irreps_in, irreps_out: the irreps of the input and output features.
        f_in, f_out: sizes of an extra channel axis before the irreps axis, mixed too.
        internal_weights: the module owns its weights (default: unless ``shared_weights=False``).
        shared_weights: one set of weights for the whole batch (default True), else per sample.
        instructions: ``(i_in, i_out)`` pairs (default: every pair of equal irreps).
        biases: per output irrep, or True for every scalar (0e) output.
        path_normalization: "element" or "path" (see the module docstring).

    Shapes: ``features`` (..., irreps_in.dim), or (..., f_in, irreps_in.dim) with ``f_in``;
    ``weight`` (weight_numel,) / (f_in, f_out, weight_numel) when shared, with batch dimensions in
    front when not; ``bias`` (bias_numel,) / (f_out, bias_numel). Returns (..., irreps_out.dim) or
    (..., f_out, irreps_out.dim).
    """

    __e3nn_compile_mode__ = "trace"

    def __init__(
        self,
        irreps_in: IrrepsLike,
        irreps_out: IrrepsLike,
        *,
        f_in: Optional[int] = None,
        f_out: Optional[int] = None,
        internal_weights: Optional[bool] = None,
        shared_weights: Optional[bool] = None,
        instructions: Optional[Sequence[tuple]] = None,
        biases: Union[bool, Sequence[bool]] = False,
        path_normalization: str = "element",
        _optimize_einsums: Optional[bool] = None,
    ) -> None:
        super().__init__()
        if path_normalization not in ("element", "path"):
            raise InstructionError(f"path_normalization must be 'element' or 'path', got {path_normalization!r}")
        self.irreps_in = parse_irreps(irreps_in, "irreps_in")
        self.irreps_out = parse_irreps(irreps_out, "irreps_out")
        self.f_in, self.f_out = f_in, f_out
        self.dim_in, self.dim_out = self.irreps_in.dim, self.irreps_out.dim  # plain ints for the forward (dynamo)
        self._optimize_einsums = e3nn.get_optimization_defaults()["optimize_einsums"] if _optimize_einsums is None else bool(_optimize_einsums)
        self.instructions = self._weight_instructions(instructions, path_normalization) + self._bias_instructions(biases)
        if shared_weights is False and internal_weights is None:
            internal_weights = False
        self.shared_weights = True if shared_weights is None else bool(shared_weights)
        self.internal_weights = True if internal_weights is None else bool(internal_weights)
        if self.internal_weights and not self.shared_weights:
            raise InstructionError("internal_weights=True requires shared_weights=True")
        self.weight_numel = sum(prod(ins.path_shape) for ins in self.instructions if ins.i_in != -1)
        self.bias_numel = sum(prod(ins.path_shape) for ins in self.instructions if ins.i_in == -1)
        channels = (f_in, f_out) if f_in is not None else ()
        if self.internal_weights and self.weight_numel > 0:
            self.weight = nn.Parameter(torch.randn(*channels, self.weight_numel))
        else:
            self.register_buffer("weight", torch.Tensor())
        if self.internal_weights and self.bias_numel > 0:
            self.bias = nn.Parameter(torch.zeros(*((f_out,) if f_out is not None else ()), self.bias_numel))
        else:
            self.register_buffer("bias", torch.Tensor())
        written = {ins.i_out for ins in self.instructions if 0 not in ins.path_shape}
        self.register_buffer("output_mask", torch.cat(
            [torch.full((mul_ir.dim,), float(i in written)) for i, mul_ir in enumerate(self.irreps_out)] or [torch.ones(0)]))
        self._plan = self._make_plan()

    def _weight_instructions(self, pairs: Optional[Sequence[tuple]], path_normalization: str) -> List[Instruction]:
        if pairs is None:
            pairs = [(i, o) for i, (_, ir_in) in enumerate(self.irreps_in) for o, (_, ir_out) in enumerate(self.irreps_out) if ir_in == ir_out]
        pairs = [tuple(pair) for pair in pairs]
        for i_in, i_out in pairs:
            if not 0 <= i_in < len(self.irreps_in):
                raise IndexError(f"{i_in} is not a valid index for irreps_in = {self.irreps_in}")
            if not 0 <= i_out < len(self.irreps_out):
                raise IndexError(f"{i_out} is not a valid index for irreps_out = {self.irreps_out}")
            if self.irreps_in[i_in].ir != self.irreps_out[i_out].ir:
                raise InstructionError(f"instruction ({i_in}, {i_out}): {self.irreps_in[i_in]} and {self.irreps_out[i_out]} are not the same irrep")

        def fan_in(i_in: int, i_out: int) -> float:
            into = [i for i, o in pairs if o == i_out]
            total = sum(self.irreps_in[i].mul for i in into) if path_normalization == "element" else self.irreps_in[i_in].mul * len(into)
            total *= self.f_in if self.f_in is not None else 1
            return 1.0 if total == 0 else float(total)

        return [Instruction(i_in, i_out, (self.irreps_in[i_in].mul, self.irreps_out[i_out].mul), fan_in(i_in, i_out) ** -0.5)
                for i_in, i_out in pairs]

    def _bias_instructions(self, biases: Union[bool, Sequence[bool], None]) -> List[Instruction]:
        if biases is None:
            biases = False
        if isinstance(biases, bool):
            biases = [biases and ir.is_scalar() for _, ir in self.irreps_out]
        biases = list(biases)
        if len(biases) != len(self.irreps_out):
            raise InstructionError(f"biases has {len(biases)} entries for {len(self.irreps_out)} output irreps ({self.irreps_out})")
        for bias, (_, ir) in zip(biases, self.irreps_out):
            if bias and not ir.is_scalar():
                raise InstructionError(f"only scalar (0e) outputs can have a bias, not {ir}")
        return [Instruction(-1, i_out, (mul_ir.dim,), 1.0) for i_out, (bias, mul_ir) in enumerate(zip(biases, self.irreps_out)) if bias]

    def _make_plan(self) -> list:
        """Per output irrep with a non-empty block: its (mul, dim) and the (input slice, mul_in,
        weight offset, path weight) of every weight instruction and the bias offset into it."""
        plan, weight_offset, bias_offset = [], 0, 0
        offsets = {}
        for ins in self.instructions:
            offsets[id(ins)] = bias_offset if ins.i_in == -1 else weight_offset
            if ins.i_in == -1:
                bias_offset += prod(ins.path_shape)
            else:
                weight_offset += prod(ins.path_shape)
        in_slices = self.irreps_in.slices()
        for i_out, (mul, ir) in enumerate(self.irreps_out):
            if mul * ir.dim == 0:
                continue
            paths = [(in_slices[ins.i_in], ins.path_shape[0], offsets[id(ins)], ins.path_weight)
                     for ins in self.instructions if ins.i_out == i_out and ins.i_in != -1 and ins.path_shape[0] > 0]
            bias = [offsets[id(ins)] for ins in self.instructions if ins.i_out == i_out and ins.i_in == -1]
            plan.append((i_out, mul, ir.dim, paths, bias[0] if bias else None))
        return plan

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.irreps_in} -> {self.irreps_out} | {self.weight_numel} weights)"

    def forward(self, features: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Apply the map to ``features`` (see the class docstring for shapes)."""
        if torch.jit.is_tracing():  # (the operator checks the weights eagerly)
            return traced_call(self, "_forward", features, self.weight if weight is None else weight, self.bias if bias is None else bias)
        return self._forward(features, weight, bias)

    def _forward(self, features: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        if features.shape[-1] != self.dim_in:
            raise InstructionError(f"features have {features.shape[-1]} components but irreps_in = {self.irreps_in} has dim {self.dim_in}")
        channel_axes = 1 if self.f_in is not None else 0
        if channel_axes and (features.ndim < 2 or features.shape[-2] != self.f_in):
            raise InstructionError(f"features must be (..., f_in={self.f_in}, {self.dim_in}), got {tuple(features.shape)}")
        weight = self._given(weight, self.weight, self.weight_numel, "weights")
        bias = self._given(bias, self.bias, self.bias_numel, "biases")
        batch = features.shape[: features.ndim - 1 - channel_axes]
        rows = batch.numel()
        x = features.reshape(rows, *features.shape[features.ndim - 1 - channel_axes:])  # (Z, [f_in,] dim_in)
        f_out = () if self.f_out is None else (self.f_out,)
        pieces = []
        for i_out, mul, dim, paths, bias_offset in self._plan:
            block = None
            for sl, mul_in, offset, path_weight in paths:
                w = self._block(weight, offset, mul_in * mul, rows)
                part = self._apply_block(x[..., sl], w, mul_in, mul, dim, path_weight)
                block = part if block is None else block + part
            if bias_offset is not None:
                b = bias.narrow(-1, bias_offset, mul * dim).reshape(1, *f_out, mul * dim)
                block = b.expand(rows, *f_out, mul * dim) if block is None else block + b
            if block is None:
                block = x.new_zeros(rows, *f_out, mul * dim)
            pieces.append(block)
        # (empty output irreps take no columns: the plan holds only the others)
        out = torch.cat(pieces, dim=-1) if pieces else x.new_zeros(rows, *f_out, self.dim_out)
        return out.reshape(*batch, *f_out, self.dim_out)

    def _given(self, value: Optional[torch.Tensor], internal: torch.Tensor, numel: int, what: str) -> torch.Tensor:
        if value is None:
            if numel > 0 and not self.internal_weights:
                raise WeightError(f"{what} must be provided when internal_weights=False")
            return internal
        if numel and value.shape[-1] != numel:
            raise WeightError(f"{what} must have {numel} entries in the last dimension, got shape {tuple(value.shape)}")
        return value

    def _block(self, weight: torch.Tensor, offset: int, size: int, rows: int) -> torch.Tensor:
        """The weights of one instruction: ([Z,] [f_in, f_out,] size)."""
        w = weight.narrow(-1, offset, size)
        if self.shared_weights:
            return w
        return w.reshape(rows, *w.shape[w.ndim - (3 if self.f_in is not None else 1):])

    def _apply_block(self, x: torch.Tensor, w: torch.Tensor, mul_in: int, mul: int, dim: int, path_weight: float) -> torch.Tensor:
        """path_weight * sum_u W[u, w] x[z, u, i] for one instruction -> (Z, [f_out,] mul * dim)."""
        rows = x.shape[0]
        if self.f_in is None:
            x = x.reshape(rows, mul_in, dim)
            if self.shared_weights:
                w = w.reshape(mul_in, mul) * path_weight
                out = torch.matmul(x.transpose(1, 2), w).transpose(1, 2) if dim > 1 else torch.mm(x[..., 0], w)
            else:
                out = torch.einsum("zuw,zui->zwi", w.reshape(rows, mul_in, mul), x) * path_weight
            return out.reshape(rows, mul * dim)
        x = x.reshape(rows, self.f_in, mul_in, dim)
        equation = "xyuw,zxui->zywi" if self.shared_weights else "zxyuw,zxui->zywi"
        shape = (self.f_in, self.f_out, mul_in, mul) if self.shared_weights else (rows, self.f_in, self.f_out, mul_in, mul)
        return (torch.einsum(equation, w.reshape(shape), x) * path_weight).reshape(rows, self.f_out, mul * dim)

    def weight_view_for_instruction(self, instruction: int, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """View of the weights of weight instruction ``instruction``: (..., mul_in, mul_out)."""
        weight = self._given(weight, self.weight, self.weight_numel, "weights")
        ins = self.instructions[instruction]
        if ins.i_in == -1:
            raise InstructionError(f"instruction {instruction} is a bias, it has no weight block")
        offset = sum(prod(i.path_shape) for i in self.instructions[:instruction] if i.i_in != -1)
        return weight.narrow(-1, offset, prod(ins.path_shape)).view(*weight.shape[:-1], *ins.path_shape)

    def weight_views(self, weight: Optional[torch.Tensor] = None, yield_instruction: bool = False) -> Iterator:
        """Views of every weight instruction's block, in order; with ``yield_instruction``
        ``(index, instruction, view)``."""
        for index, ins in enumerate(self.instructions):
            if ins.i_in != -1:
                view = self.weight_view_for_instruction(index, weight)
                yield (index, ins, view) if yield_instruction else view

    def _make_tracing_inputs(self, n: int) -> list:
        """Example inputs for ``torch.jit.trace_module`` (used by ``e3nn.util.jit.compile``)."""
        dtype = self.output_mask.dtype if self.output_mask.is_floating_point() else torch.get_default_dtype()
        inputs = []
        for _ in range(n):
            shape = (random.randint(1, 4),) + ((self.f_in,) if self.f_in is not None else ()) + (self.irreps_in.dim,)
            x = torch.randn(*shape, dtype=dtype, device=self.output_mask.device)
            if self.internal_weights or self.weight_numel + self.bias_numel == 0:
                inputs.append({"forward": (x,)})
            else:
                batch = () if self.shared_weights else shape[:1]
                channels = (self.f_in, self.f_out) if self.f_in is not None else ()
                w = torch.randn(*batch, *channels, self.weight_numel, dtype=dtype, device=x.device)
                b = torch.randn(*batch, *channels[1:], self.bias_numel, dtype=dtype, device=x.device)
                inputs.append({"forward": (x, w, b)})
        return inputs

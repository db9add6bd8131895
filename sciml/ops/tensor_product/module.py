"""``TensorProduct``: a drop-in for ``e3nn.o3.TensorProduct`` with fast backends."""

from __future__ import annotations

import random
import warnings
from math import prod
from typing import Iterator, Optional, Sequence

import e3nn
import torch
from e3nn import o3
from e3nn.o3._tensor_product._tensor_product import TensorProduct as _E3nnTensorProduct  # the original, even once patched
from torch import nn

from sciml.ops.irreps import IrrepsLike, default_dtype, parse_irreps
from sciml.ops.jit_trace import traced_call
from sciml.ops import backends
from sciml.ops.tensor_product.instructions import InstructionError, Path, build_paths
from sciml.ops.tensor_product.lowering import LoweredTensorProduct
from sciml.ops.tensor_product.reference import reference_tensor_product


def output_mask(irreps_out: o3.Irreps, paths: Sequence[Path]) -> torch.Tensor:
    """(irreps_out.dim,) float: 1 on the output irreps some path with a non-zero coefficient and
    weights writes to, 0 elsewhere (e3nn's ``output_mask``)."""
    written = {p.i_out for p in paths if p.coefficient != 0 and 0 not in p.weight_shape}
    return torch.cat([torch.full((mul * ir.dim,), float(i in written)) for i, (mul, ir) in enumerate(irreps_out)] or [torch.ones(0)])


def _add_e3nn_constants(module: "TensorProduct", state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: add e3nn's code-generation constants, so that an e3nn module of the same
    construction loads sciml's state dict with ``strict=True`` (they are never read back)."""
    dtype = module.weight.dtype if module.weight.dtype in (torch.float32, torch.float64) else torch.get_default_dtype()
    for name, value in module.e3nn_constants(dtype).items():
        state_dict[prefix + name] = value.to(module.weight.device)


class WeightError(ValueError, RuntimeError):
    """Missing or mis-shaped tensor-product weights (a ``ValueError``; also the ``RuntimeError``
    e3nn raises for the same mistake)."""


class TensorProduct(nn.Module):
    r"""Tensor product of two irreps features, equal to ``e3nn.o3.TensorProduct``.

    Takes e3nn's constructor arguments, in e3nn's order, with e3nn's meaning and defaults (see
    ``sciml.ops.tensor_product.instructions`` for the modes and the weight layout), plus the
    keyword ``backend`` ("auto", "reference", "torch", "cpu", "triton", "cuda"; default from
    ``SCIML_TP_BACKEND``). e3nn's code-generation switches (``compile_left_right``,
    ``compile_right``, ``_specialized_code``, ``_optimize_einsums``) are accepted and change
    nothing: both ``forward`` and ``right`` always work. Output component k of the path
    (i1, i2 -> i_out) is ``coefficient * sum_ij C[i, j, k] x1_i x2_j`` times its weight, with ``C``
    e3nn's ``wigner_3j`` and ``coefficient`` e3nn's normalisation from ``in*_var``,
    ``irrep_normalization`` and ``path_normalization``; paths into the same output irrep add.

    Shapes: ``x`` (..., irreps_in1.dim), ``y`` (..., irreps_in2.dim) with broadcastable batch
    dimensions (any of them may be 0, any irreps may be empty), ``weight`` (weight_numel,) when
    ``shared_weights`` else (..., weight_numel), or a list of per-instruction blocks of shape
    ``path_shape`` (with the batch dimensions in front when not shared); returns
    (..., irreps_out.dim). The state dict (``weight``, ``output_mask``) is e3nn's: either module
    loads the other's with ``strict=True``.
    """

    # how e3nn.util.jit compiles it: torch.jit.trace through the sciml operators
    __e3nn_compile_mode__ = "trace"

    def __init__(
        self,
        irreps_in1: IrrepsLike,
        irreps_in2: IrrepsLike,
        irreps_out: IrrepsLike,
        instructions: Sequence[tuple],
        in1_var: Optional[Sequence[float]] = None,
        in2_var: Optional[Sequence[float]] = None,
        out_var: Optional[Sequence[float]] = None,
        irrep_normalization: Optional[str] = None,
        path_normalization: Optional[str] = None,
        internal_weights: Optional[bool] = None,
        shared_weights: Optional[bool] = None,
        compile_left_right: bool = True,
        compile_right: bool = False,
        normalization: Optional[str] = None,
        _specialized_code: Optional[bool] = None,
        _optimize_einsums: Optional[bool] = None,
        *,
        backend: Optional[str] = None,
    ) -> None:
        """``normalization`` is e3nn's deprecated alias of ``irrep_normalization``."""
        super().__init__()
        if normalization is not None:
            warnings.warn("`normalization` is deprecated. Use `irrep_normalization` instead.", DeprecationWarning, stacklevel=2)
            if irrep_normalization is not None and irrep_normalization != normalization:
                raise InstructionError("pass either irrep_normalization or its deprecated alias normalization, not both")
            irrep_normalization = normalization
        self.irreps_in1 = parse_irreps(irreps_in1, "irreps_in1")
        self.irreps_in2 = parse_irreps(irreps_in2, "irreps_in2")
        self.irreps_out = parse_irreps(irreps_out, "irreps_out")
        if backend is not None:
            backends.requested("tensor_product", backend)
        self.backend = backend
        defaults = e3nn.get_optimization_defaults()  # (recorded for e3nn code that reads them; no effect)
        self._specialized_code = defaults["specialized_code"] if _specialized_code is None else bool(_specialized_code)
        self._optimize_einsums = defaults["optimize_einsums"] if _optimize_einsums is None else bool(_optimize_einsums)
        self.raw_instructions = [tuple(i) for i in instructions]
        self._e3nn_arguments = dict(
            irreps_in1=self.irreps_in1, irreps_in2=self.irreps_in2, irreps_out=self.irreps_out, instructions=self.raw_instructions,
            in1_var=in1_var, in2_var=in2_var, out_var=out_var, irrep_normalization=irrep_normalization,
            path_normalization=path_normalization, internal_weights=False, shared_weights=shared_weights,
            compile_left_right=compile_left_right, compile_right=compile_right,
            _specialized_code=_specialized_code, _optimize_einsums=_optimize_einsums,
        )
        self.paths, self.weight_numel = build_paths(
            self.irreps_in1, self.irreps_in2, self.irreps_out, self.raw_instructions, in1_var, in2_var, out_var,
            irrep_normalization or "component", path_normalization or "element",
        )
        if shared_weights is False and internal_weights is None:
            internal_weights = False
        if shared_weights is None:
            shared_weights = True
        if internal_weights is None:
            internal_weights = shared_weights and any(p.has_weight for p in self.paths)
        if internal_weights and not shared_weights:
            raise InstructionError("internal_weights=True requires shared_weights=True")
        self.shared_weights = bool(shared_weights)
        self.internal_weights = bool(internal_weights)
        if self.internal_weights and self.weight_numel > 0:
            self.weight = nn.Parameter(torch.randn(self.weight_numel))
        else:
            self.register_buffer("weight", torch.Tensor())
        self.register_buffer("output_mask", output_mask(self.irreps_out, self.paths))
        out_blocks = [(sl, mul, ir.dim) for sl, (mul, ir) in zip(self.irreps_out.slices(), self.irreps_out)]
        self._lowered = LoweredTensorProduct(self.paths, self.irreps_out.dim, out_blocks, self.shared_weights)
        # plain ints for the forward (e3nn's Irreps objects are opaque to dynamo's guards)
        self.dim_in1, self.dim_in2, self.dim_out = self.irreps_in1.dim, self.irreps_in2.dim, self.irreps_out.dim
        self._resolve_backend()
        self.register_state_dict_post_hook(_add_e3nn_constants)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Loads e3nn's state dicts too: their code-generation constants (``_compiled_main*``:
        Clebsch-Gordan tensors, index tables) are dropped, sciml computes its own."""
        for key in [k for k in state_dict if k.startswith(prefix + "_compiled_main")]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def e3nn_constants(self, dtype: torch.dtype) -> dict:
        """The constants e3nn's code generation stores in an e3nn module of this construction
        built with default dtype ``dtype`` (name relative to the module -> tensor), computed once
        per dtype by building that module."""
        cache = self.__dict__.setdefault("_e3nn_constants", {})
        if dtype not in cache:
            with default_dtype(dtype):
                twin = _E3nnTensorProduct(**self._e3nn_arguments)
            cache[dtype] = {k: v for k, v in twin.state_dict().items() if k.startswith("_compiled_main")}
        return cache[dtype]

    def _resolve_backend(self) -> None:
        """Choose the backend for the module's device and dtype: once, at construction and when the
        module moves (``.to``, ``.cuda``, ``.double``), not on every call."""
        dtype = self.weight.dtype if self.weight.is_floating_point() else torch.get_default_dtype()
        self.resolved_backend = backends.resolve("tensor_product", self.backend, self.weight.device, dtype)
        self._resolved_for = (self.backend, self.weight.device, self.weight.dtype)

    def _apply(self, fn, recurse: bool = True):
        module = super()._apply(fn, recurse)
        self._resolve_backend()
        return module

    def backend_for(self, x: torch.Tensor) -> str:
        """The backend that runs on ``x``: the one chosen for the module, unless ``x`` lives
        elsewhere, the ``backend`` attribute changed, or ``x``'s dtype needs the reference."""
        if self._resolved_for[:2] != (self.backend, x.device) or (x.dtype != self._resolved_for[2] and x.dtype not in backends.KERNEL_DTYPES):
            return backends.resolve("tensor_product", self.backend, x.device, x.dtype)
        return self.resolved_backend

    @property
    def instructions(self) -> list:
        """The normalised instructions (``instructions.Path``), e3nn's ``tp.instructions``: same
        fields (``i_in1``, ``i_in2``, ``i_out``, ``connection_mode``, ``has_weight``,
        ``path_weight`` = the normalised coefficient, ``path_shape``)."""
        return self.paths

    def __repr__(self) -> str:
        paths = sum(prod(p.weight_shape) for p in self.paths)
        return (
            f"{type(self).__name__}({self.irreps_in1.simplify()} x {self.irreps_in2.simplify()} -> "
            f"{self.irreps_out.simplify()} | {paths} paths | {self.weight_numel} weights)"
        )

    def _weights(self, weight: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
        """Flat, checked weights (``flat_weight``) as (1, weight_numel) when shared, else
        (batch numel, weight_numel)."""
        if self.weight_numel == 0:
            rows = 1 if self.shared_weights else batch_shape.numel()
            return weight.new_zeros(rows, 0) if weight.is_floating_point() else torch.zeros(rows, 0)
        if self.shared_weights:
            return weight.reshape(1, -1)
        return weight.expand(*batch_shape, self.weight_numel).reshape(-1, self.weight_numel)

    def flat_weight(self, weight=None) -> torch.Tensor:
        """``weight`` as passed to ``forward`` (None for the internal weights, a flat tensor, or a
        list of per-instruction blocks) -> the flat weights, shape-checked: (weight_numel,) when
        shared, else (..., weight_numel)."""
        if isinstance(weight, (list, tuple)):
            shapes = [p.weight_shape for p in self.paths if p.has_weight]
            if len(weight) != len(shapes):
                raise WeightError(f"got {len(weight)} weight blocks for {len(shapes)} weighted instructions")
            flat = [w.reshape(prod(shape)) if self.shared_weights else w.reshape(*w.shape[: w.ndim - len(shape)], prod(shape))
                    for w, shape in zip(weight, shapes)]
            weight = torch.cat(flat, dim=-1) if flat else None
        if weight is None:
            if self.weight_numel > 0 and not self.internal_weights:
                raise WeightError("this tensor product has no internal weights: pass `weight`")
            return self.weight
        if self.weight_numel == 0:
            return weight
        if self.shared_weights and weight.shape != (self.weight_numel,):
            raise WeightError(f"shared weights must have shape ({self.weight_numel},), got {tuple(weight.shape)}")
        if not self.shared_weights and (weight.ndim < 2 or weight.shape[-1] != self.weight_numel):
            raise WeightError(f"per-sample weights must have shape (..., {self.weight_numel}), got {tuple(weight.shape)}")
        return weight

    def _traced_weight(self, weight) -> Optional[torch.Tensor]:
        """The weights handed to the traced operator, unchecked (the checks read shapes, which a
        trace records as tensors; the operator runs them eagerly): blocks joined, the internal
        weights made an input so that gradients reach them."""
        if isinstance(weight, (list, tuple)):
            return torch.cat([w.flatten(-len(p.weight_shape)) for w, p in zip(weight, [p for p in self.paths if p.has_weight])], dim=-1)
        if weight is None and (self.internal_weights or self.weight_numel == 0):
            return self.weight
        return weight

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight=None) -> torch.Tensor:
        """Product of ``x`` (..., irreps_in1.dim) and ``y`` (..., irreps_in2.dim) (e3nn's argument names)."""
        if torch.jit.is_tracing():
            return traced_call(self, "_forward", x, y, self._traced_weight(weight))
        return self._forward(x, y, weight)

    def _forward(self, x: torch.Tensor, y: torch.Tensor, weight=None) -> torch.Tensor:
        x1, x2 = x, y
        if x1.shape[-1] != self.dim_in1:
            raise InstructionError(f"x1 has {x1.shape[-1]} features but irreps_in1 = {self.irreps_in1} has dim {self.irreps_in1.dim}")
        if x2.shape[-1] != self.dim_in2:
            raise InstructionError(f"x2 has {x2.shape[-1]} features but irreps_in2 = {self.irreps_in2} has dim {self.irreps_in2.dim}")
        weight = self.flat_weight(weight)
        try:
            batch_shape = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
            if not self.shared_weights and self.weight_numel:
                batch_shape = torch.broadcast_shapes(batch_shape, weight.shape[:-1])
        except RuntimeError:
            raise InstructionError(
                f"batch shapes do not broadcast: x1 {tuple(x1.shape)}, x2 {tuple(x2.shape)}, weight {tuple(weight.shape)}"
            ) from None
        w = self._weights(weight, batch_shape)
        rows = batch_shape.numel()
        if rows == 0 or self.dim_out == 0:
            zeros = torch.zeros(*batch_shape, self.dim_out, dtype=torch.result_type(x1, x2), device=x1.device)
            return zeros + 0 * (x1.sum() + x2.sum() + w.sum())  # zeros that keep the inputs in the graph
        flat1 = x1.expand(*batch_shape, x1.shape[-1]).reshape(rows, x1.shape[-1])
        flat2 = x2.expand(*batch_shape, x2.shape[-1]).reshape(rows, x2.shape[-1])
        backend = self.backend_for(flat1)
        if backend == "reference":
            out = reference_tensor_product(self.paths, self.dim_out, flat1, flat2, w[0] if self.shared_weights else w, self.shared_weights)
        else:
            out = self._lowered(flat1, flat2, w, backend)
        return out.reshape(*batch_shape, self.dim_out)

    def right(self, y: torch.Tensor, weight=None) -> torch.Tensor:
        """The product with ``y`` as an operator on ``x``: (..., irreps_in1.dim, irreps_out.dim), so
        that ``forward(x, y) = einsum("...i,...ik->...k", x, right(y))`` (e3nn's ``right``)."""
        if torch.jit.is_tracing():
            return traced_call(self, "_right", y, self._traced_weight(weight))
        return self._right(y, weight)

    def _right(self, y: torch.Tensor, weight=None) -> torch.Tensor:
        if y.shape[-1] != self.dim_in2:
            raise InstructionError(f"y has {y.shape[-1]} features but irreps_in2 = {self.irreps_in2} has dim {self.irreps_in2.dim}")
        weight = self.flat_weight(weight)
        if not self.shared_weights and self.weight_numel:
            weight = weight.unsqueeze(-2)
        basis = torch.eye(self.dim_in1, dtype=y.dtype, device=y.device)
        return self._forward(basis, y.unsqueeze(-2), weight)

    def weight_view_for_instruction(self, instruction: int, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """View of the weights of instruction number ``instruction`` (internal ones, or those of
        ``weight`` as passed to ``forward``): (..., *path_shape)."""
        path = self.paths[instruction]
        if not path.has_weight:
            raise InstructionError(f"Instruction {instruction} has no weights.")
        weight = self.flat_weight(weight)
        return weight.narrow(-1, path.weight_slice.start, prod(path.weight_shape)).view(*weight.shape[:-1], *path.weight_shape)

    def weight_views(self, weight: Optional[torch.Tensor] = None, yield_instruction: bool = False) -> Iterator:
        """Views of every weighted instruction's weights, in order; with ``yield_instruction``
        ``(index, instruction, view)`` tuples (e3nn's ``weight_views``)."""
        for index, path in enumerate(self.paths):
            if path.has_weight:
                view = self.weight_view_for_instruction(index, weight)
                yield (index, path, view) if yield_instruction else view

    def _make_tracing_inputs(self, n: int) -> list:
        """Example inputs for ``torch.jit.trace_module`` of ``forward`` and ``right`` (used by
        ``e3nn.util.jit.compile``), ``n`` sets of them."""
        dtype, device = (self.weight.dtype, self.weight.device) if self.weight.is_floating_point() else (torch.get_default_dtype(), self.weight.device)
        inputs = []
        for _ in range(n):
            batch = random.randint(1, 4)
            x = torch.randn(batch, self.dim_in1, dtype=dtype, device=device)
            y = torch.randn(batch, self.dim_in2, dtype=dtype, device=device)
            if self.internal_weights or self.weight_numel == 0:
                inputs.append({"forward": (x, y), "right": (y,)})
            else:
                shape = (self.weight_numel,) if self.shared_weights else (batch, self.weight_numel)
                w = torch.randn(*shape, dtype=dtype, device=device)
                inputs.append({"forward": (x, y, w), "right": (y, w)})
        return inputs

    @classmethod
    def from_e3nn(cls, tp: nn.Module, backend: Optional[str] = None) -> "TensorProduct":
        """Convert an ``e3nn.o3.TensorProduct`` (or subclass) with its weights.

        e3nn stores each path's final normalisation coefficient; it is carried over exactly (as a
        ``path_weight`` with normalisations "none"), so the outputs are equal for any settings.
        """
        instructions = [
            (ins.i_in1, ins.i_in2, ins.i_out, ins.connection_mode, ins.has_weight, ins.path_weight**2)
            for ins in tp.instructions
        ]
        new = cls(
            tp.irreps_in1, tp.irreps_in2, tp.irreps_out, instructions,
            irrep_normalization="none", path_normalization="none",
            internal_weights=tp.internal_weights, shared_weights=tp.shared_weights, backend=backend,
        )
        if new.internal_weights and new.weight_numel > 0:
            new = new.to(dtype=tp.weight.dtype, device=tp.weight.device)
            with torch.no_grad():
                new.weight.copy_(tp.weight.detach())
        return new

"""``TensorProduct``: a drop-in for ``e3nn.o3.TensorProduct`` with fast backends."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from sciml.ops.irreps import IrrepsLike, parse_irreps
from sciml.ops import backends
from sciml.ops.tensor_product.instructions import build_paths
from sciml.ops.tensor_product.lowering import LoweredTensorProduct
from sciml.ops.tensor_product.reference import reference_tensor_product


class TensorProduct(nn.Module):
    r"""Tensor product of two irreps features, equal to ``e3nn.o3.TensorProduct``.

    Takes e3nn's constructor arguments with e3nn's meaning and defaults (see
    ``sciml.ops.tensor_product.instructions`` for the modes and the weight layout), plus ``backend``
    ("auto", "reference", "torch", "cpu", "triton", "cuda"; default from ``SCIML_TP_BACKEND``).
    Output component k of the path (i1, i2 -> i_out) is
    ``coefficient * sum_ij C[i, j, k] x1_i x2_j`` times its weight, with ``C`` e3nn's ``wigner_3j``
    and ``coefficient`` e3nn's normalisation from ``in*_var``, ``irrep_normalization`` and
    ``path_normalization``; paths into the same output irrep add.

    Shapes: ``x1`` (..., irreps_in1.dim), ``x2`` (..., irreps_in2.dim) with broadcastable batch
    dimensions, ``weight`` (weight_numel,) when ``shared_weights`` else (..., weight_numel); returns
    (..., irreps_out.dim).
    """

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
        backend: Optional[str] = None,
        normalization: Optional[str] = None,
        compile_left_right: bool = True,
        compile_right: bool = False,
    ) -> None:
        """``normalization`` is e3nn's deprecated alias of ``irrep_normalization``; e3nn's codegen
        switches ``compile_left_right``/``compile_right`` are accepted and have nothing to switch."""
        super().__init__()
        if normalization is not None:
            if irrep_normalization is not None and irrep_normalization != normalization:
                raise ValueError("pass either irrep_normalization or its deprecated alias normalization, not both")
            irrep_normalization = normalization
        self.irreps_in1 = parse_irreps(irreps_in1, "irreps_in1")
        self.irreps_in2 = parse_irreps(irreps_in2, "irreps_in2")
        self.irreps_out = parse_irreps(irreps_out, "irreps_out")
        if backend is not None:
            backends.requested("tensor_product", backend)
        self.backend = backend
        self.raw_instructions = [tuple(i) for i in instructions]
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
            raise ValueError("internal_weights=True requires shared_weights=True")
        self.shared_weights = bool(shared_weights)
        self.internal_weights = bool(internal_weights)
        if self.internal_weights and self.weight_numel > 0:
            self.weight = nn.Parameter(torch.randn(self.weight_numel))
        else:
            self.register_buffer("weight", torch.Tensor(), persistent=False)
        out_blocks = [(sl, mul, ir.dim) for sl, (mul, ir) in zip(self.irreps_out.slices(), self.irreps_out)]
        self._lowered = LoweredTensorProduct(self.paths, self.irreps_out.dim, out_blocks, self.shared_weights)
        # plain ints for the forward (e3nn's Irreps objects are opaque to dynamo's guards)
        self.dim_in1, self.dim_in2, self.dim_out = self.irreps_in1.dim, self.irreps_in2.dim, self.irreps_out.dim
        self._resolve_backend()

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
        """The normalised instructions (``instructions.Path``), e3nn's ``tp.instructions`` equivalent."""
        return self.paths

    def extra_repr(self) -> str:
        return (
            f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, {len(self.paths)} paths, "
            f"weight_numel={self.weight_numel}, shared_weights={self.shared_weights}, backend={self.backend or 'auto'}"
        )

    def _weights(self, weight: Optional[torch.Tensor], batch_shape: torch.Size) -> torch.Tensor:
        if weight is None:
            if self.weight_numel > 0 and not self.internal_weights:
                raise ValueError("this tensor product has no internal weights: pass `weight`")
            weight = self.weight
        if self.weight_numel == 0:
            return weight.new_zeros(1, 0) if self.shared_weights else weight.new_zeros(batch_shape.numel(), 0)
        if self.shared_weights:
            if weight.shape != (self.weight_numel,):
                raise ValueError(f"shared weights must have shape ({self.weight_numel},), got {tuple(weight.shape)}")
            return weight.reshape(1, -1)
        if weight.shape[-1] != self.weight_numel:
            raise ValueError(f"weights must have shape (..., {self.weight_numel}), got {tuple(weight.shape)}")
        return weight.expand(*batch_shape, self.weight_numel).reshape(-1, self.weight_numel)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Product of ``x`` (..., irreps_in1.dim) and ``y`` (..., irreps_in2.dim) (e3nn's argument names)."""
        x1, x2 = x, y
        if x1.shape[-1] != self.dim_in1:
            raise ValueError(f"x1 has {x1.shape[-1]} features but irreps_in1 = {self.irreps_in1} has dim {self.irreps_in1.dim}")
        if x2.shape[-1] != self.dim_in2:
            raise ValueError(f"x2 has {x2.shape[-1]} features but irreps_in2 = {self.irreps_in2} has dim {self.irreps_in2.dim}")
        try:
            batch_shape = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1])
            if weight is not None and not self.shared_weights:
                batch_shape = torch.broadcast_shapes(batch_shape, weight.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"batch shapes do not broadcast: x1 {tuple(x1.shape)}, x2 {tuple(x2.shape)}"
                + (f", weight {tuple(weight.shape)}" if weight is not None else "")
            ) from None
        w = self._weights(weight, batch_shape)
        flat1 = x1.expand(*batch_shape, x1.shape[-1]).reshape(-1, x1.shape[-1])
        flat2 = x2.expand(*batch_shape, x2.shape[-1]).reshape(-1, x2.shape[-1])
        backend = self.backend_for(flat1)
        if backend == "reference":
            out = reference_tensor_product(self.paths, self.dim_out, flat1, flat2, w[0] if self.shared_weights else w, self.shared_weights)
        else:
            out = self._lowered(flat1, flat2, w, backend)
        return out.reshape(*batch_shape, self.dim_out)

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


def _fully_connected_instructions(irreps_in1, irreps_in2, irreps_out) -> list:
    return [
        (i1, i2, io, "uvw", True)
        for i1, (_, ir1) in enumerate(irreps_in1)
        for i2, (_, ir2) in enumerate(irreps_in2)
        for io, (_, ir_out) in enumerate(irreps_out)
        if ir_out in ir1 * ir2
    ]


class FullyConnectedTensorProduct(TensorProduct):
    """All allowed paths in mode ``uvw`` (e3nn's ``FullyConnectedTensorProduct``)."""

    def __init__(self, irreps_in1: IrrepsLike, irreps_in2: IrrepsLike, irreps_out: IrrepsLike, **kwargs) -> None:
        in1, in2, out = (parse_irreps(x, n) for x, n in ((irreps_in1, "irreps_in1"), (irreps_in2, "irreps_in2"), (irreps_out, "irreps_out")))
        super().__init__(in1, in2, out, _fully_connected_instructions(in1, in2, out), **kwargs)


class ChannelwiseTensorProduct(TensorProduct):
    """All allowed paths in mode ``uvu``: each channel of ``x1`` is coupled with ``x2`` on its own.

    The convolution tensor product of NequIP/MACE: ``x1`` node features C x (0e+1o+...),
    ``x2`` edge spherical harmonics, per-edge weights (``shared_weights=False`` by default) from a
    radial network. ``irreps_out`` defaults to ``irreps_in1``; every output irrep must have the
    multiplicity of the ``x1`` irreps feeding it.
    """

    def __init__(
        self,
        irreps_in1: IrrepsLike,
        irreps_in2: IrrepsLike,
        irreps_out: Optional[IrrepsLike] = None,
        shared_weights: bool = False,
        internal_weights: bool = False,
        **kwargs,
    ) -> None:
        in1 = parse_irreps(irreps_in1, "irreps_in1")
        in2 = parse_irreps(irreps_in2, "irreps_in2")
        out = parse_irreps(irreps_out if irreps_out is not None else irreps_in1, "irreps_out")
        instructions = [
            (i1, i2, io, "uvu", True)
            for i1, (mul1, ir1) in enumerate(in1)
            for i2, (_, ir2) in enumerate(in2)
            for io, (mul_out, ir_out) in enumerate(out)
            if ir_out in ir1 * ir2 and mul_out == mul1
        ]
        super().__init__(in1, in2, out, instructions, shared_weights=shared_weights, internal_weights=internal_weights, **kwargs)

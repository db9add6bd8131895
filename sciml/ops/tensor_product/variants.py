"""The tensor products e3nn builds from instructions it chooses (``e3nn.o3._tensor_product._sub``),
with e3nn's arguments and irreps, on sciml's kernels, and sciml's channelwise convolution product."""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import torch
from e3nn import o3

from sciml.ops.irreps import IrrepsLike, parse_irreps
from sciml.ops.tensor_product.instructions import InstructionError
from sciml.ops.tensor_product.module import TensorProduct


def _filter(filter_ir_out: Optional[Iterable]) -> Optional[List[o3.Irrep]]:
    if filter_ir_out is None:
        return None
    try:
        return [o3.Irrep(ir) for ir in filter_ir_out]
    except (ValueError, TypeError, AssertionError):
        raise InstructionError(f"filter_ir_out (={filter_ir_out}) must be an iterable of e3nn.o3.Irrep") from None


class FullyConnectedTensorProduct(TensorProduct):
    """Every allowed path in mode ``uvw``, weighted (e3nn's ``FullyConnectedTensorProduct``)."""

    def __init__(
        self,
        irreps_in1: IrrepsLike,
        irreps_in2: IrrepsLike,
        irreps_out: IrrepsLike,
        irrep_normalization: Optional[str] = None,
        path_normalization: Optional[str] = None,
        **kwargs,
    ) -> None:
        in1, in2, out = (parse_irreps(x, n) for x, n in ((irreps_in1, "irreps_in1"), (irreps_in2, "irreps_in2"), (irreps_out, "irreps_out")))
        instructions = [
            (i1, i2, io, "uvw", True, 1.0)
            for i1, (_, ir1) in enumerate(in1)
            for i2, (_, ir2) in enumerate(in2)
            for io, (_, ir_out) in enumerate(out)
            if ir_out in ir1 * ir2
        ]
        super().__init__(in1, in2, out, instructions, irrep_normalization=irrep_normalization,
                         path_normalization=path_normalization, **kwargs)


class ElementwiseTensorProduct(TensorProduct):
    """z_u = x_u ⊗ y_u irrep copy by irrep copy, no weights (e3nn's ``ElementwiseTensorProduct``).

    Both inputs must hold the same number of irreps (after ``simplify``); blocks are split so that
    their multiplicities line up; ``filter_ir_out`` keeps only the listed output irreps.
    """

    def __init__(self, irreps_in1: IrrepsLike, irreps_in2: IrrepsLike, filter_ir_out: Optional[Iterable] = None,
                 irrep_normalization: Optional[str] = None, **kwargs) -> None:
        in1 = list(parse_irreps(irreps_in1, "irreps_in1").simplify())
        in2 = list(parse_irreps(irreps_in2, "irreps_in2").simplify())
        keep = _filter(filter_ir_out)
        if sum(mul for mul, _ in in1) != sum(mul for mul, _ in in2):
            raise InstructionError(f"irreps_in1 {o3.Irreps(in1)} and irreps_in2 {o3.Irreps(in2)} must hold as many irreps")
        i = 0
        while i < len(in1):  # split the larger block so that block i has one multiplicity in both
            (mul1, ir1), (mul2, ir2) = in1[i], in2[i]
            if mul1 < mul2:
                in2[i:i + 1] = [(mul1, ir2), (mul2 - mul1, ir2)]
            elif mul2 < mul1:
                in1[i:i + 1] = [(mul2, ir1), (mul1 - mul2, ir1)]
            i += 1
        out, instructions = [], []
        for i, ((mul, ir1), (_, ir2)) in enumerate(zip(in1, in2)):
            for ir in ir1 * ir2:
                if keep is None or ir in keep:
                    instructions.append((i, i, len(out), "uuu", False))
                    out.append((mul, ir))
        super().__init__(in1, in2, out, instructions, irrep_normalization=irrep_normalization, **kwargs)


class FullTensorProduct(TensorProduct):
    """z_uv = x_u ⊗ y_v for every pair of irrep copies into every allowed output, no weights,
    output irreps sorted (e3nn's ``FullTensorProduct``)."""

    def __init__(self, irreps_in1: IrrepsLike, irreps_in2: IrrepsLike, filter_ir_out: Optional[Iterable] = None,
                 irrep_normalization: Optional[str] = None, **kwargs) -> None:
        in1 = parse_irreps(irreps_in1, "irreps_in1").simplify()
        in2 = parse_irreps(irreps_in2, "irreps_in2").simplify()
        keep = _filter(filter_ir_out)
        out, instructions = [], []
        for i1, (mul1, ir1) in enumerate(in1):
            for i2, (mul2, ir2) in enumerate(in2):
                for ir in ir1 * ir2:
                    if keep is None or ir in keep:
                        instructions.append((i1, i2, len(out), "uvuv", False))
                        out.append((mul1 * mul2, ir))
        out, order, _ = o3.Irreps(out).sort()
        instructions = [(i1, i2, order[io], mode, weighted) for i1, i2, io, mode, weighted in instructions]
        super().__init__(in1, in2, out, instructions, irrep_normalization=irrep_normalization, **kwargs)


def _square_weight(normalization: str, ir1: o3.Irrep, ir2: o3.Irrep, ir_out: o3.Irrep, diagonal: bool) -> float:
    """Path weight of one square path: e3nn's irrep normalisation, and for the diagonal (u = v)
    paths of an irrep with itself the factor that keeps x ⊗ x normalised (its mean is not zero)."""
    if not diagonal:
        return {"component": ir_out.dim, "norm": ir1.dim * ir2.dim, "none": 1}[normalization]
    if normalization == "component":
        return ir_out.dim / (ir1.dim + 2) if ir_out.l == 0 else ir_out.dim / 2
    if normalization == "norm":
        return ir_out.dim * ir1.dim if ir_out.l == 0 else ir1.dim * (ir1.dim + 2) / 2
    return 1.0


def _square_products(irreps_in: o3.Irreps, i1: int, i2: int, ir_out: o3.Irrep, normalization: str) -> list:
    """The independent products of x ⊗ x from irreps i1 <= i2 into ``ir_out``, as
    (mode, output multiplicity, path weight): pairs of different irreps (i1 < i2), pairs u < v of
    copies of one irrep, and the symmetric (even l) part of u = v."""
    (mul1, ir1), (mul2, ir2) = irreps_in[i1], irreps_in[i2]
    if i1 < i2:
        return [("uvuv", mul1 * mul2, _square_weight(normalization, ir1, ir2, ir_out, False))]
    products = []
    if mul1 > 1:
        products.append(("uvu<v", mul1 * (mul1 - 1) // 2, _square_weight(normalization, ir1, ir2, ir_out, False)))
    if ir_out.l % 2 == 0:
        products.append(("uuu", mul1, _square_weight(normalization, ir1, ir2, ir_out, True)))
    return products


def _square_instructions(irreps_in: o3.Irreps, keep, normalization: str) -> Tuple[o3.Irreps, list]:
    """Unweighted square: every independent product its own output block, irreps sorted."""
    out, instructions = [], []
    for i1, (_, ir1) in enumerate(irreps_in):
        for i2 in range(i1, len(irreps_in)):
            for ir_out in ir1 * irreps_in[i2].ir:
                if keep is None or ir_out in keep:
                    for mode, mul_out, weight in _square_products(irreps_in, i1, i2, ir_out, normalization):
                        instructions.append((i1, i2, len(out), mode, False, weight))
                        out.append((mul_out, ir_out))
    out, order, _ = o3.Irreps(out).sort()
    return out, [(i1, i2, order[io], *rest) for i1, i2, io, *rest in instructions]


def _square_mixed_instructions(irreps_in: o3.Irreps, irreps_out: o3.Irreps, normalization: str) -> list:
    """Weighted square: the independent products mixed into ``irreps_out`` (e3nn's order)."""
    weighted = {"uvuv": "uvw", "uvu<v": "u<vw", "uuu": "uuw"}
    return [
        (i1, i2, io, weighted[mode], True, weight)
        for i1, (_, ir1) in enumerate(irreps_in)
        for i2 in range(i1, len(irreps_in))
        for io, (_, ir_out) in enumerate(irreps_out)
        if ir_out in ir1 * irreps_in[i2].ir
        for mode, _, weight in _square_products(irreps_in, i1, i2, ir_out, normalization)
    ]


class TensorSquare(TensorProduct):
    """x ⊗ x reduced to its independent components (e3nn's ``TensorSquare``): without
    ``irreps_out`` every product is an unweighted output block, with it they are mixed into
    ``irreps_out`` with weights. ``forward(x, weight=None)``."""

    def __init__(self, irreps_in: IrrepsLike, irreps_out: Optional[IrrepsLike] = None, filter_ir_out: Optional[Iterable] = None,
                 irrep_normalization: Optional[str] = None, **kwargs) -> None:
        normalization = irrep_normalization or "component"
        if normalization not in ("component", "norm", "none"):
            raise InstructionError(f"irrep_normalization must be component, norm or none, got {normalization!r}")
        irreps_in = parse_irreps(irreps_in, "irreps_in").simplify()
        keep = _filter(filter_ir_out)
        if irreps_out is not None and keep is not None:
            raise InstructionError("Both `irreps_out` and `filter_ir_out` are not None, this is ambiguous.")
        if irreps_out is None:
            out, instructions = _square_instructions(irreps_in, keep, normalization)
        else:
            out = parse_irreps(irreps_out, "irreps_out").simplify()
            instructions = _square_mixed_instructions(irreps_in, out, normalization)
        super().__init__(irreps_in, irreps_in, out, instructions, irrep_normalization="none", **kwargs)
        self.irreps_in = irreps_in

    def forward(self, x: torch.Tensor, weight=None) -> torch.Tensor:  # type: ignore[override]
        """(..., irreps_in.dim) -> (..., irreps_out.dim)."""
        return super().forward(x, x, weight)

    def _make_tracing_inputs(self, n: int) -> list:
        return [{"forward": args["forward"][:1] + args["forward"][2:]} for args in super()._make_tracing_inputs(n)]


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

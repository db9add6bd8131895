"""Tensor-product instructions: validation, e3nn's normalisation and the flat weight layout.

An instruction ``(i_in1, i_in2, i_out, mode, has_weight[, path_weight])`` couples irrep ``i_in1`` of
the first input with irrep ``i_in2`` of the second into irrep ``i_out`` of the output. The modes say
how the multiplicities (channels) combine, with ``u``, ``v``, ``w`` the channels of input 1, input 2
and the output and the weight shape in brackets:

- ``uvw`` [u, v, w]: every pair of input channels feeds every output channel (fully connected);
- ``uvu`` [u, v]: output channel u collects input-2 channels v (channelwise when mul2 = 1);
- ``uvv`` [u, v]: output channel v collects input-1 channels u;
- ``uuw`` [u, w]: matching channels of both inputs, mixed into output channels w;
- ``uuu`` [u]: elementwise in channels;
- ``uvuv`` [u, v]: every channel pair is its own output channel (outer product), mul_out = mul1 mul2;
- ``uvu<v`` [q]: the pairs q = (u, v) with u < v of equal multiplicities (upper triangle, row by row)
  are the output channels, mul_out = mul (mul - 1) / 2 (the antisymmetric/symmetric square);
- ``u<vw`` [q, w]: those pairs mixed into output channels w.

Weights of all weighted instructions are concatenated in instruction order, each block flattened in
row-major order of its shape: e3nn's layout, so e3nn weights load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod, sqrt
from typing import Optional, Sequence

from e3nn import o3

MODES = ("uvw", "uvu", "uvv", "uuw", "uuu", "uvuv", "uvu<v", "u<vw")
IRREP_NORMALIZATIONS = ("component", "norm", "none")
PATH_NORMALIZATIONS = ("element", "path", "none")


class InstructionError(ValueError, AssertionError):
    """An invalid tensor-product instruction or argument (a ``ValueError``; also an
    ``AssertionError``, which is what e3nn raises for the same mistakes and what e3nn code catches)."""


class InstructionIndexError(InstructionError, IndexError):
    """An instruction refers to an irrep index outside the irreps (e3nn raises ``IndexError``)."""


@dataclass(frozen=True)
class Path:
    """One normalised instruction with everything a backend needs.

    ``coefficient`` is the constant multiplying the Clebsch-Gordan contraction (e3nn's normalised
    ``path_weight``); ``slice1``/``slice2``/``slice_out`` locate the irreps in the flat ``mul_ir``
    features and ``weight_slice`` the path's weights in the flat weight vector (None if unweighted).
    """

    i_in1: int
    i_in2: int
    i_out: int
    mode: str
    has_weight: bool
    coefficient: float
    mul1: int
    mul2: int
    mul_out: int
    l1: int
    l2: int
    l3: int
    slice1: slice
    slice2: slice
    slice_out: slice
    weight_shape: tuple
    weight_slice: Optional[slice]

    # e3nn's ``Instruction`` field names, for code written against ``tp.instructions``
    @property
    def connection_mode(self) -> str:
        return self.mode

    @property
    def path_weight(self) -> float:
        return self.coefficient

    @property
    def path_shape(self) -> tuple:
        return self.weight_shape


def weight_shape(mode: str, mul1: int, mul2: int, mul_out: int) -> tuple:
    """Shape of one instruction's weights for ``mode``."""
    return {
        "uvw": (mul1, mul2, mul_out),
        "uvu": (mul1, mul2),
        "uvv": (mul1, mul2),
        "uuw": (mul1, mul_out),
        "uuu": (mul1,),
        "uvuv": (mul1, mul2),
        "uvu<v": (mul1 * (mul2 - 1) // 2,),
        "u<vw": (mul1 * (mul2 - 1) // 2, mul_out),
    }[mode]


def _summed_elements(mode: str, mul1: int, mul2: int) -> int:
    """How many products are summed into one output component (e3nn's ``num_elements``)."""
    pairs = mul1 * (mul2 - 1) // 2
    return {"uvw": mul1 * mul2, "uvu": mul2, "uvv": mul1, "uuw": mul1, "uuu": 1, "uvuv": 1, "uvu<v": 1, "u<vw": pairs}[mode]


def _check_multiplicities(mode: str, mul1: int, mul2: int, mul_out: int, has_weight: bool, where: str) -> None:
    expected = {
        "uvu": (mul_out == mul1, f"mul_out ({mul_out}) must equal mul1 ({mul1})"),
        "uvv": (mul_out == mul2, f"mul_out ({mul_out}) must equal mul2 ({mul2})"),
        "uuu": (mul1 == mul2 == mul_out, f"mul1, mul2 and mul_out ({mul1}, {mul2}, {mul_out}) must be equal"),
        "uuw": (mul1 == mul2, f"mul1 ({mul1}) must equal mul2 ({mul2})"),
        "uvuv": (mul_out == mul1 * mul2, f"mul_out ({mul_out}) must equal mul1 * mul2 ({mul1 * mul2})"),
        "uvw": (True, ""),
        "uvu<v": (mul1 == mul2 and mul_out == mul1 * (mul1 - 1) // 2,
                  f"mul1 and mul2 ({mul1}, {mul2}) must be equal and mul_out ({mul_out}) the number of pairs u < v"),
        "u<vw": (mul1 == mul2, f"mul1 ({mul1}) must equal mul2 ({mul2})"),
    }[mode]
    if not expected[0]:
        raise InstructionError(f"{where}: mode {mode!r}: {expected[1]}")
    if mode in ("uvw", "u<vw") and not has_weight:
        raise InstructionError(f"{where}: mode {mode!r} needs weights (has_weight=True)")
    if mode == "uuw" and not has_weight and mul_out != 1:
        raise InstructionError(f"{where}: unweighted 'uuw' sums the channels, so mul_out must be 1 (got {mul_out})")


def _variances(values: Optional[Sequence[float]], irreps: o3.Irreps, name: str) -> list:
    if values is None:
        return [1.0] * len(irreps)
    values = [float(v) for v in values]
    if len(values) != len(irreps):
        raise InstructionError(f"{name} has {len(values)} entries but the irreps {irreps} have {len(irreps)}")
    return values


def build_paths(
    irreps_in1: o3.Irreps,
    irreps_in2: o3.Irreps,
    irreps_out: o3.Irreps,
    instructions: Sequence[tuple],
    in1_var: Optional[Sequence[float]] = None,
    in2_var: Optional[Sequence[float]] = None,
    out_var: Optional[Sequence[float]] = None,
    irrep_normalization: str = "component",
    path_normalization: str = "element",
) -> tuple:
    """Validate ``instructions`` and normalise them as e3nn does.

    Returns ``(paths, weight_numel)``. Raises ``InstructionError`` (a ``ValueError``) naming the
    instruction and irreps for unknown modes, parity or triangle-rule violations and bad
    multiplicities, ``InstructionIndexError`` for out-of-range indices.
    """
    if irrep_normalization not in IRREP_NORMALIZATIONS:
        raise InstructionError(f"irrep_normalization must be one of {IRREP_NORMALIZATIONS}, got {irrep_normalization!r}")
    if path_normalization not in PATH_NORMALIZATIONS:
        raise InstructionError(f"path_normalization must be one of {PATH_NORMALIZATIONS}, got {path_normalization!r}")
    var1 = _variances(in1_var, irreps_in1, "in1_var")
    var2 = _variances(in2_var, irreps_in2, "in2_var")
    var_out = _variances(out_var, irreps_out, "out_var")
    slices1, slices2, slices_out = irreps_in1.slices(), irreps_in2.slices(), irreps_out.slices()

    parsed = []
    for number, instruction in enumerate(instructions):
        instruction = tuple(instruction)
        if len(instruction) not in (5, 6):
            raise InstructionError(
                f"instruction {number} {instruction!r}: expected (i_in1, i_in2, i_out, mode, has_weight[, path_weight])"
            )
        i1, i2, io, mode, has_weight = instruction[:5]
        path_weight = float(instruction[5]) if len(instruction) == 6 else 1.0
        where = f"instruction {number} {instruction!r}"
        for index, irreps, label in ((i1, irreps_in1, "irreps_in1"), (i2, irreps_in2, "irreps_in2"), (io, irreps_out, "irreps_out")):
            if not 0 <= index < len(irreps):
                raise InstructionIndexError(f"{where}: index {index} out of range for {label} = {irreps} ({len(irreps)} irreps)")
        if mode not in MODES:
            raise InstructionError(f"{where}: unknown connection mode {mode!r}; supported: {MODES}")
        (mul1, ir1), (mul2, ir2), (mul_out, ir_out) = irreps_in1[i1], irreps_in2[i2], irreps_out[io]
        if ir1.p * ir2.p != ir_out.p:
            raise InstructionError(f"{where}: {ir1} x {ir2} -> {ir_out} violates parity ({ir1.p} * {ir2.p} != {ir_out.p})")
        if not abs(ir1.l - ir2.l) <= ir_out.l <= ir1.l + ir2.l:
            raise InstructionError(f"{where}: {ir1} x {ir2} -> {ir_out} violates the selection rule |l1-l2| <= l3 <= l1+l2")
        _check_multiplicities(mode, mul1, mul2, mul_out, bool(has_weight), where)
        parsed.append((i1, i2, io, mode, bool(has_weight), path_weight, mul1, mul2, mul_out, ir1.l, ir2.l, ir_out.l))

    paths, offset = [], 0
    for i1, i2, io, mode, has_weight, path_weight, mul1, mul2, mul_out, l1, l2, l3 in parsed:
        alpha = {"component": 2 * l3 + 1, "norm": (2 * l1 + 1) * (2 * l2 + 1), "none": 1}[irrep_normalization]
        if path_normalization == "element":
            x = sum(var1[p[0]] * var2[p[1]] * _summed_elements(p[3], p[6], p[7]) for p in parsed if p[2] == io)
        elif path_normalization == "path":
            x = var1[i1] * var2[i2] * _summed_elements(mode, mul1, mul2) * sum(1 for p in parsed if p[2] == io)
        else:
            x = 1.0
        if x > 0:
            alpha /= x
        alpha *= var_out[io] * path_weight
        shape = weight_shape(mode, mul1, mul2, mul_out)
        weight_slice = None
        if has_weight:
            weight_slice = slice(offset, offset + prod(shape))
            offset += prod(shape)
        paths.append(
            Path(i1, i2, io, mode, has_weight, sqrt(alpha), mul1, mul2, mul_out, l1, l2, l3,
                 slices1[i1], slices2[i2], slices_out[io], shape, weight_slice)
        )
    return paths, offset

"""Random e3nn tensor products for the backend tests (every connection mode, shared or per-sample weights)."""

from __future__ import annotations

import random

import torch
from e3nn import o3

from sciml.ops.irreps import default_dtype

MODES = ("uvw", "uvu", "uvv", "uuw", "uuu", "uvuv", "uvu<v", "u<vw")


def random_irreps(rng: random.Random, count: int, max_l: int = 2, max_mul: int = 3) -> o3.Irreps:
    return o3.Irreps([(rng.randint(1, max_mul), (rng.randint(0, max_l), rng.choice((1, -1)))) for _ in range(count)])


def e3nn_module(factory, dtype: torch.dtype):
    """Build an e3nn module with ``dtype`` as the default (e3nn bakes its Clebsch-Gordan constants in
    the default dtype at construction, so a float32-built module is only float32-accurate)."""
    with default_dtype(dtype):
        return factory()


def random_e3nn_tensor_product(seed: int, mode: str, shared: bool, max_l: int = 2, max_mul: int = 3,
                               dtype: torch.dtype = torch.float32) -> o3.TensorProduct:
    """An ``o3.TensorProduct`` in ``dtype`` with random irreps and every allowed path in ``mode``."""
    rng = random.Random(seed)
    while True:
        in1, in2 = random_irreps(rng, 3, max_l, max_mul), random_irreps(rng, 2, max_l, max_mul)
        if mode in ("uuw", "uuu", "uvu<v", "u<vw"):  # equal multiplicities (at least 2 for pairs u < v)
            mul = rng.randint(1 if mode in ("uuw", "uuu") else 2, max_mul)
            in1 = o3.Irreps([(mul, ir) for _, ir in in1])
            in2 = o3.Irreps([(mul, ir) for _, ir in in2])
        outs, instructions = [], []
        for i1, (mul1, ir1) in enumerate(in1):
            for i2, (mul2, ir2) in enumerate(in2):
                for ir_out in ir1 * ir2:
                    has_weight = mode in ("uvw", "u<vw") or rng.random() < 0.8
                    mul_out = {"uvw": rng.randint(1, max_mul), "uvu": mul1, "uvv": mul2, "uuu": mul1,
                               "uvuv": mul1 * mul2, "uuw": rng.randint(1, max_mul) if has_weight else 1,
                               "uvu<v": mul1 * (mul1 - 1) // 2, "u<vw": rng.randint(1, max_mul)}[mode]
                    outs.append((mul_out, ir_out))
                    instructions.append((i1, i2, len(outs) - 1, mode, has_weight))
        if instructions:
            break
    internal = shared and any(ins[4] for ins in instructions)
    return e3nn_module(
        lambda: o3.TensorProduct(in1, in2, o3.Irreps(outs), instructions, shared_weights=shared, internal_weights=internal),
        dtype,
    )

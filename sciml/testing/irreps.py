"""Equivariance of functions on irreps features (the ops' tests): f(D_in x) = D_out f(x).

Features are e3nn-style flat vectors in the ``mul_ir`` layout: for each ``mul x (l, p)`` of the
irreps, ``mul`` copies of 2l+1 components, one after the other. Under an (im)proper rotation R
(det R = ±1) such a feature transforms by the block-diagonal matrix with ``mul`` blocks
``p^k D^l(det(R) R)`` per entry, k = 1 for det R = -1 (else 0): e3nn's ``Irreps.D_from_matrix``,
built here from sciml's own Wigner-D (:func:`sciml.ops.wigner.wigner_D_blocks`).
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
import torch
from e3nn import o3

from sciml.ops.wigner import wigner_D_blocks
from sciml.testing.equivariance import random_rotation

IrrepsLike = Union[str, o3.Irreps]


def irreps_wigner_D(irreps: IrrepsLike, rotation: torch.Tensor) -> torch.Tensor:
    """Block-diagonal Wigner-D of ``irreps`` for one (im)proper rotation.

    Args:
        irreps: e3nn-style irreps ("2x0e+1x1o+3x2e" or ``o3.Irreps``), ``mul_ir`` layout.
        rotation: (3, 3) orthogonal matrix acting on column vectors (det +1 or -1).

    Returns:
        (dim, dim) with ``dim = irreps.dim``, dtype and device of ``rotation``; equals
        ``o3.Irreps(irreps).D_from_matrix(rotation)``.
    """
    irreps = o3.Irreps(irreps)
    if not irreps:
        return rotation.new_zeros(0, 0)
    improper = bool(torch.linalg.det(rotation) < 0)
    # wigner_D_blocks gives the representation of parity (-1)^l; the irrep's own parity p differs
    # from it under an improper rotation by the sign p (-1)^l.
    blocks = wigner_D_blocks(max(ir.l for _, ir in irreps), rotation)
    diagonal = []
    for mul, ir in irreps:
        sign = ir.p * (-1) ** ir.l if improper else 1
        diagonal += [sign * blocks[ir.l]] * mul
    return torch.block_diag(*diagonal)


def assert_irreps_equivariant(
    fn: Callable[..., torch.Tensor],
    irreps_in: Sequence[IrrepsLike],
    irreps_out: IrrepsLike,
    *,
    dtype: torch.dtype = torch.float64,
    atol: float = 1e-10,
    batch: int = 5,
    rotations: int = 3,
    parity: bool = True,
    seed: int = 0,
) -> float:
    """Assert ``fn(D_1 x_1, ..., D_n x_n) == D_out fn(x_1, ..., x_n)`` for random rotations.

    Args:
        fn: maps tensors (batch, irreps_in[i].dim) to (batch, irreps_out.dim).
        irreps_in: the irreps of each argument of ``fn``, in order.
        irreps_out: the irreps of its output.
        dtype: of the random inputs and the Wigner-D matrices.
        atol: largest allowed absolute difference (in the units of ``fn``'s output).
        batch: rows of each random input (standard normal).
        rotations: how many random rotations are tried (uniform in SO(3)).
        parity: also try each rotation composed with the inversion (det -1), for O(3)-equivariant
            ``fn``; False checks SO(3) only.
        seed: of the inputs and the rotations.

    Returns:
        The largest difference found (<= ``atol``).

    Raises:
        AssertionError: naming the rotation (proper or improper) and the difference, when it exceeds ``atol``.
    """
    irreps_in = [o3.Irreps(irreps) for irreps in irreps_in]
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, irreps.dim, generator=generator, dtype=dtype) for irreps in irreps_in]
    out = fn(*inputs)
    worst = 0.0
    for trial in range(rotations):
        for proper in (True, False) if parity else (True,):
            rotation = torch.tensor(random_rotation(rng, proper=proper), dtype=dtype)
            rotated = fn(*[x @ irreps_wigner_D(irreps, rotation).T for x, irreps in zip(inputs, irreps_in)])
            error = float((rotated - out @ irreps_wigner_D(irreps_out, rotation).T).detach().abs().max())
            kind = "proper" if proper else "improper"
            assert error <= atol, f"not equivariant: {error:.3e} > atol {atol:.1e} for {kind} rotation {trial}"
            worst = max(worst, error)
    return worst

"""Speed of sciml's SO(3) kernels against e3nn: spherical harmonics, Wigner-D, SO(2) convolution.

All float32, in one process, best of a few runs; single-threaded unless the caller set otherwise.
On a shared machine the times are indicative only.

- spherical harmonics, lmax 2/4/6/8 on 10 ``num`` random vectors (``normalize=True``,
  "component"): ``sciml.ops.spherical_harmonics`` against a persistent
  ``e3nn.o3.SphericalHarmonics`` module (the fast way to use e3nn: its functional form builds a
  new TorchScript module per call). "forward" runs with inputs that require gradients (as when
  forces are needed; e3nn's no-grad lmax >= 6 path is pathologically slow and would flatter us),
  "forward+backward" adds the gradient with respect to the vectors.
- Wigner-D, lmax 2/4/6 on ``num`` random rotations: ``wigner_D`` (the block-diagonal matrix) and
  ``wigner_D_blocks`` (the per-degree list) against
  ``e3nn.o3.Irreps.spherical_harmonics(lmax).D_from_matrix``, forward only.
- SO(2) convolution against the e3nn ``FullyConnectedTensorProduct`` it equals (checked before
  timing): x ``C x (0e+1o+2e+...+L)`` times the edge harmonics ``1x(0e+1o+...+L)`` to
  ``C x (0e+1o+...+L)``, shared weights, L = 2, 4, 6 and C = 16 (C = 64 at L = 2), fewer edges
  at higher L to keep e3nn's share short (the edge count is in ``case``). Each side gets its
  per-edge geometry precomputed, as a model computes it once per forward for all layers: the
  harmonics for e3nn, the Wigner blocks D(edge_rotation(edge)) for sciml.
  "forward+backward" adds the gradients with respect to x and the weights.
"""

from __future__ import annotations

from typing import Callable, Dict, List

import torch
from e3nn import o3

from sciml.bench.timing import best_seconds
from sciml.ops.gaunt import channels_to_mul_ir
from sciml.ops.so2 import SO2Convolution, edge_tensor_product_paths
from sciml.ops.spherical_harmonics import spherical_harmonics_upto
from sciml.ops.wigner import edge_rotation, wigner_D, wigner_D_blocks


def _ms(fn: Callable[[], object], repeats: int) -> float:
    return 1e3 * best_seconds(fn, repeats, min_seconds=0.2)


def _row(op: str, case: str, sciml_ms: float, e3nn_ms: float) -> Dict:
    return {"op": op, "case": case, "sciml_ms": sciml_ms, "e3nn_ms": e3nn_ms, "speedup": e3nn_ms / sciml_ms}


def _harmonics_rows(vectors: int, repeats: int, generator: torch.Generator) -> List[Dict]:
    rows = []
    x = torch.randn(vectors, 3, generator=generator).requires_grad_(True)
    for lmax in (2, 4, 6, 8):
        module = o3.SphericalHarmonics(list(range(lmax + 1)), True, "component")
        case = f"lmax={lmax} N={vectors}"
        rows.append(
            _row(
                "spherical_harmonics forward",
                case,
                _ms(lambda: spherical_harmonics_upto(lmax, x), repeats),
                _ms(lambda: module(x), repeats),
            )
        )
        rows.append(
            _row(
                "spherical_harmonics forward+backward",
                case,
                _ms(lambda: torch.autograd.grad(spherical_harmonics_upto(lmax, x).sum(), x), repeats),
                _ms(lambda: torch.autograd.grad(module(x).sum(), x), repeats),
            )
        )
    return rows


def _wigner_rows(rotations: int, repeats: int) -> List[Dict]:
    rows = []
    rot = o3.rand_matrix(rotations)
    for lmax in (2, 4, 6):
        irreps = o3.Irreps.spherical_harmonics(lmax)
        e3nn_ms = _ms(lambda: irreps.D_from_matrix(rot), 2 if lmax >= 6 else repeats)
        case = f"lmax={lmax} E={rotations}"
        rows.append(_row("wigner_D", case, _ms(lambda: wigner_D(lmax, rot), repeats), e3nn_ms))
        rows.append(_row("wigner_D_blocks", case, _ms(lambda: wigner_D_blocks(lmax, rot), repeats), e3nn_ms))
    return rows


def _so2_rows(num: int, repeats: int, generator: torch.Generator) -> List[Dict]:
    rows = []
    for lmax, channels, edges in (
        (2, 16, num),
        (2, 64, max(num // 4, 1)),
        (4, 16, max(num // 4, 1)),
        (6, 16, max(num // 5, 1)),
    ):
        irreps = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])
        tp = o3.FullyConnectedTensorProduct(irreps, o3.Irreps.spherical_harmonics(lmax), irreps)
        conv = SO2Convolution.from_edge_tensor_product(lmax, channels, channels, edge_tensor_product_paths(tp))
        vectors = torch.randn(edges, 3, generator=generator)
        sh = o3.spherical_harmonics(list(range(lmax + 1)), vectors, True, "component")
        wigner = wigner_D_blocks(lmax, edge_rotation(vectors))
        x = torch.randn(edges, (lmax + 1) ** 2, channels, generator=generator).requires_grad_(True)
        flat = channels_to_mul_ir(x.detach()).requires_grad_(True)
        with torch.no_grad():
            error = (channels_to_mul_ir(conv(x, wigner)) - tp(flat, sh)).abs().max().item()
        if error > 1e-3:
            raise RuntimeError(f"SO2Convolution and e3nn's tensor product differ by {error:.2e} at L={lmax}")
        grad_out = torch.randn(edges, (lmax + 1) ** 2, channels, generator=generator)
        grad_flat = channels_to_mul_ir(grad_out)
        ours, theirs = [x] + list(conv.parameters()), [flat] + list(tp.parameters())
        case = f"L={lmax} C={channels} E={edges} ({len(tp.instructions)} paths)"
        rows.append(
            _row(
                "SO2Convolution vs FCTP forward",
                case,
                _ms(lambda: conv(x, wigner), repeats),
                _ms(lambda: tp(flat, sh), repeats),
            )
        )
        rows.append(
            _row(
                "SO2Convolution vs FCTP forward+backward",
                case,
                _ms(lambda: torch.autograd.grad(conv(x, wigner), ours, grad_out), repeats),
                _ms(lambda: torch.autograd.grad(tp(flat, sh), theirs, grad_flat), repeats),
            )
        )
    return rows


def so3_rows(num: int = 10_000, repeats: int = 3, seed: int = 0) -> List[Dict]:
    """Time sciml's SO(3) kernels against e3nn (see the module docstring for the cases).

    Args:
        num: rotations for Wigner-D and edges for the SO(2) convolution at L = 2 (10 ``num``
            vectors for the harmonics).
        repeats: timed runs per measurement (the best is kept; fewer for slow e3nn cases).

    Returns:
        Rows ``{"op", "case", "sciml_ms", "e3nn_ms", "speedup"}`` with speedup = e3nn / sciml.
        About 40 s at the defaults on one core.
    """
    generator = torch.Generator().manual_seed(seed)
    return (
        _harmonics_rows(10 * num, repeats, generator) + _wigner_rows(num, repeats) + _so2_rows(num, repeats, generator)
    )


def format_so3_table(rows: List[Dict]) -> str:
    """A text table of :func:`so3_rows` (speedup above 1 means sciml is faster)."""
    lines = [f"{'op':<40} {'case':<32} {'sciml ms':>9} {'e3nn ms':>9} {'speedup':>8}"]
    for r in rows:
        lines.append(f"{r['op']:<40} {r['case']:<32} {r['sciml_ms']:>9.2f} {r['e3nn_ms']:>9.2f} {r['speedup']:>8.1f}")
    return "\n".join(lines)

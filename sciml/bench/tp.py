"""``sciml bench tp``: tensor-product kernels against e3nn, in one run, with the machine's limits.

Every case is checked equal to e3nn before it is timed. Times are the best of a few runs, float32,
with the thread count the caller set. "forward" runs with inputs that require gradients (as in
training), "forward+backward" adds the backward pass to every input. Peak memory is the largest
resident-memory growth while running forward+backward once, measured in a forked child process.
The machine's matrix-multiply GFLOP/s and copy bandwidth are measured in the same run; each
channelwise case prints its useful FLOPs (structural non-zeros of the Clebsch-Gordan tensors
only), the GFLOP/s that makes, and how far its time is above the roofline bound
max(FLOPs / matmul peak, bytes / copy bandwidth), with bytes = one pass over x1, x2, the weights
and the output.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import numpy as np
import torch
from e3nn import o3

from sciml.bench.timing import best_seconds, peak_extra_mb
from sciml.ops import ChannelwiseTensorProduct, FullyConnectedTensorProduct, tensor_product_conv
from sciml.ops.irreps import clebsch_gordan


def best_ms(fn: Callable[[], object], repeats: int, budget_s: float = 0.5) -> float:
    """Fastest of ``repeats`` runs after one warm-up (fewer when they exceed ``budget_s`` each), ms."""
    return 1e3 * best_seconds(fn, repeats, budget_seconds=budget_s * repeats)


def machine_limits() -> Dict[str, float]:
    """Matrix-multiply GFLOP/s (1024^3, float32) and copy bandwidth (GB/s, 256 MB arrays), measured now."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    matmul_ms = best_ms(lambda: torch.mm(a, b), 5)
    source = torch.randn(64 * 1024 * 1024)
    target = torch.empty_like(source)
    copy_ms = best_ms(lambda: target.copy_(source), 3)
    return {"matmul_gflops": 2 * 1024**3 / matmul_ms / 1e6, "copy_gbs": 2 * source.numel() * 4 / copy_ms / 1e6}


def feature_irreps(channels: int, lmax: int) -> o3.Irreps:
    """``channels x (0e + 1o + 2e + ... + lmax)``."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


def useful_flops(tp) -> int:
    """FLOPs per sample of the forward that touch only Clebsch-Gordan non-zeros: mul (2 nnz + d3) per path."""
    return sum(p.mul1 * (2 * int(np.count_nonzero(clebsch_gordan(p.l1, p.l2, p.l3))) + 2 * p.l3 + 1) for p in tp.paths)


def _timings(ours, theirs, inputs: Sequence[torch.Tensor], repeats: int) -> Dict[str, float]:
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    expected, got = theirs(*leaves), ours(*leaves)
    scale = expected.abs().max().item() + 1.0
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
        raise AssertionError(f"sciml differs from e3nn by {(got - expected).abs().max().item():.3g}; not timing it")

    def forward_backward(module):
        def run():
            out = module(*leaves)
            out.backward(torch.ones_like(out))
        return run

    return {
        "e3nn_fwd": best_ms(lambda: theirs(*leaves), repeats),
        "sciml_fwd": best_ms(lambda: ours(*leaves), repeats),
        "e3nn_fb": best_ms(forward_backward(theirs), repeats),
        "sciml_fb": best_ms(forward_backward(ours), repeats),
        "e3nn_mb": peak_extra_mb(forward_backward(theirs)),
        "sciml_mb": peak_extra_mb(forward_backward(ours)),
    }


def channelwise_rows(channels: Sequence[int], lmaxes: Sequence[int], edges: int, limits: Dict, repeats: int = 3) -> List[Dict]:
    """Channelwise TP C x (0e+...+L) x edge harmonics (0e+...+L) -> C x (0e+...+L), per-edge weights."""
    rows, generator = [], torch.Generator().manual_seed(0)
    for lmax in lmaxes:
        for c in channels:
            irreps, sh = feature_irreps(c, lmax), o3.Irreps.spherical_harmonics(lmax)
            ours = ChannelwiseTensorProduct(irreps, sh)
            theirs = o3.TensorProduct(irreps, sh, irreps, ours.raw_instructions, shared_weights=False, internal_weights=False)
            inputs = [torch.randn(edges, irreps.dim, generator=generator), torch.randn(edges, sh.dim, generator=generator),
                      torch.randn(edges, ours.weight_numel, generator=generator)]
            row = {"op": "channelwise", "case": f"C={c} L={lmax} E={edges}", "paths": len(ours.paths)}
            row.update(_timings(ours, theirs, inputs, repeats))
            flops = useful_flops(ours) * edges
            moved = 4 * edges * (irreps.dim + sh.dim + ours.weight_numel + irreps.dim)
            bound_ms = 1e3 * max(flops / (limits["matmul_gflops"] * 1e9), moved / (limits["copy_gbs"] * 1e9))
            row.update(gflops=flops / row["sciml_fwd"] / 1e6, bound_ms=bound_ms, above_bound=row["sciml_fwd"] / bound_ms)
            rows.append(row)
    return rows


def fully_connected_rows(channels: int, lmaxes: Sequence[int], edges: int, repeats: int = 3) -> List[Dict]:
    """Fully connected TP (uvw, shared weights) C x (0e+...+L) x harmonics -> C x (0e+...+L)."""
    rows, generator = [], torch.Generator().manual_seed(1)
    for lmax in lmaxes:
        irreps, sh = feature_irreps(channels, lmax), o3.Irreps.spherical_harmonics(lmax)
        theirs = o3.FullyConnectedTensorProduct(irreps, sh, irreps)
        ours = FullyConnectedTensorProduct(irreps, sh, irreps)
        with torch.no_grad():
            ours.weight.copy_(theirs.weight)
        inputs = [torch.randn(edges, irreps.dim, generator=generator), torch.randn(edges, sh.dim, generator=generator)]
        row = {"op": "fully_connected", "case": f"C={channels} L={lmax} E={edges}", "paths": len(ours.paths)}
        row.update(_timings(ours, theirs, inputs, repeats))
        rows.append(row)
    return rows


def conv_rows(channels: int, lmaxes: Sequence[int], nodes: int, edges: int, repeats: int = 3) -> List[Dict]:
    """Fused tensor_product_conv against e3nn's gather -> channelwise TP -> index_add."""
    rows, generator = [], torch.Generator().manual_seed(2)
    edge_index = torch.randint(0, nodes, (2, edges), generator=generator)
    for lmax in lmaxes:
        irreps, sh = feature_irreps(channels, lmax), o3.Irreps.spherical_harmonics(lmax)
        tp = ChannelwiseTensorProduct(irreps, sh)
        e3nn_tp = o3.TensorProduct(irreps, sh, irreps, tp.raw_instructions, shared_weights=False, internal_weights=False)

        def ours(x, attrs, weights):
            return tensor_product_conv(x, attrs, weights, edge_index, tp)

        def theirs(x, attrs, weights):
            messages = e3nn_tp(x[edge_index[1]], attrs, weights)
            return torch.zeros(nodes, irreps.dim).index_add(0, edge_index[0], messages)

        inputs = [torch.randn(nodes, irreps.dim, generator=generator), torch.randn(edges, sh.dim, generator=generator),
                  torch.randn(edges, tp.weight_numel, generator=generator)]
        row = {"op": "conv (fused)", "case": f"C={channels} L={lmax} N={nodes} E={edges}", "paths": len(tp.paths)}
        row.update(_timings(ours, theirs, inputs, repeats))
        rows.append(row)
    return rows


def format_tp_table(rows: List[Dict], limits: Dict) -> str:
    lines = [
        f"machine: matmul {limits['matmul_gflops']:.1f} GFLOP/s, copy {limits['copy_gbs']:.1f} GB/s, "
        f"{torch.get_num_threads()} threads, float32",
        f"{'op':<16} {'case':<26} {'fwd e3nn':>9} {'sciml':>8} {'x':>6} {'f+b e3nn':>9} {'sciml':>8} {'x':>6} "
        f"{'MB e3nn':>8} {'sciml':>7} {'GFLOP/s':>8} {'x bound':>8}",
    ]
    for r in rows:
        extra = f" {r['gflops']:>8.1f} {r['above_bound']:>8.1f}" if "gflops" in r else ""
        lines.append(
            f"{r['op']:<16} {r['case']:<26} {r['e3nn_fwd']:>9.2f} {r['sciml_fwd']:>8.2f} {r['e3nn_fwd'] / r['sciml_fwd']:>6.1f} "
            f"{r['e3nn_fb']:>9.2f} {r['sciml_fb']:>8.2f} {r['e3nn_fb'] / r['sciml_fb']:>6.1f} "
            f"{r['e3nn_mb']:>8.1f} {r['sciml_mb']:>7.1f}{extra}"
        )
    lines.append("times in ms (best of runs); x = e3nn time / sciml time; MB = peak memory growth of forward+backward;")
    lines.append("x bound = sciml forward time / roofline bound max(useful FLOPs / matmul peak, bytes / copy bandwidth)")
    return "\n".join(lines)

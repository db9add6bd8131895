"""``sciml bench tp``: tensor-product kernels against e3nn, in one run, with the machine's limits.

Every case is checked equal to e3nn before it is timed. Times are the best of a few runs, float32,
with the thread count the caller set; e3nn and sciml take turns, so a change of machine load hits
both alike. "forward" runs with inputs that require gradients (as in training),
"forward+backward" adds the backward pass to every input, the gradients accumulating into
``.grad`` as in a training loop. Peak memory is the largest resident-memory growth while running
forward+backward once, measured in a forked child process.

The layouts: channelwise products whose paths sum into one output irrep per degree, the layout
MACE and NequIP build (one ``C x l_out`` output block per path, MACE's
``tp_out_irreps_with_instructions``), fully connected products with shared and with per-sample
weights, and the fused convolution.

The machine's matrix-multiply GFLOP/s and copy bandwidth are measured in the same run; each
tensor-product case prints its useful FLOPs (structural non-zeros of the Clebsch-Gordan tensors
only, channel mixing in its cheapest order), the GFLOP/s of the forward, and how far its forward
and forward+backward times are above the roofline bound max(FLOPs / matmul peak, bytes / copy
bandwidth). Forward bytes are one pass over x1, x2, the weights and the output; forward+backward
adds one pass over the output gradient and the inputs and the writing of their gradients, and
four times the forward FLOPs (the forward and one product per gradient).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from e3nn import o3

from sciml.bench.timing import alternating_best_seconds, best_seconds, peak_extra_mb
from sciml.ops import ChannelwiseTensorProduct, FullyConnectedTensorProduct, TensorProduct, tensor_product_conv
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


def _path_flops(path) -> int:
    """Useful FLOPs of one path per sample: 2 per Clebsch-Gordan non-zero and channel product, d3
    per channel for a per-channel weight, and channel mixing (a GEMM) in its cheapest order."""
    nnz = int(np.count_nonzero(clebsch_gordan(path.l1, path.l2, path.l3)))
    d1, d2, d3 = 2 * path.l1 + 1, 2 * path.l2 + 1, 2 * path.l3 + 1
    u, v, w = path.mul1, path.mul2, path.mul_out
    if path.mode == "uvw":  # mix x1 first, mix x2 first, or mix the product
        return min(2 * u * v * w * d1 + v * w * 2 * nnz, 2 * u * v * w * d2 + u * w * 2 * nnz, u * v * 2 * nnz + 2 * u * v * w * d3)
    if path.mode == "uuw":
        return u * 2 * nnz + 2 * u * w * d3
    if path.mode in ("uvu", "uvv") and min(u, v) > 1:  # weights contract the summed channel first
        kept, summed, d_summed = (u, v, d2) if path.mode == "uvu" else (v, u, d1)
        return 2 * kept * summed * d_summed + kept * 2 * nnz
    channels = u * v if path.mode == "uvuv" else max(u, v)
    return channels * (2 * nnz + (d3 if path.has_weight else 0))


def useful_flops(tp) -> int:
    """FLOPs per sample of the forward that touch only Clebsch-Gordan non-zeros (``_path_flops``)."""
    return sum(_path_flops(p) for p in tp.paths)


def roofline(tp, rows: int, row: Dict, limits: Dict) -> Dict[str, float]:
    """GFLOP/s of the forward and its distance ("x bound") above the roofline bound, forward and
    forward+backward (see the module docstring), for ``rows`` samples of ``tp``."""
    flops = useful_flops(tp) * rows
    weights = tp.weight_numel * (1 if tp.shared_weights else rows)
    inputs = 4 * (rows * (tp.dim_in1 + tp.dim_in2) + weights)
    output = 4 * rows * tp.dim_out

    def bound_ms(flop: float, moved: float) -> float:
        return 1e3 * max(flop / (limits["matmul_gflops"] * 1e9), moved / (limits["copy_gbs"] * 1e9))

    forward_ms, both_ms = bound_ms(flops, inputs + output), bound_ms(4 * flops, 3 * inputs + 2 * output)
    return {"gflops": flops / row["sciml_fwd"] / 1e6, "bound_ms": forward_ms, "above_bound": row["sciml_fwd"] / forward_ms,
            "bound_fb_ms": both_ms, "above_bound_fb": row["sciml_fb"] / both_ms}


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

    e3nn_fwd, sciml_fwd = alternating_best_seconds([lambda: theirs(*leaves), lambda: ours(*leaves)], repeats)
    e3nn_fb, sciml_fb = alternating_best_seconds([forward_backward(theirs), forward_backward(ours)], repeats)
    return {
        "e3nn_fwd": 1e3 * e3nn_fwd,
        "sciml_fwd": 1e3 * sciml_fwd,
        "e3nn_fb": 1e3 * e3nn_fb,
        "sciml_fb": 1e3 * sciml_fb,
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
            row.update(roofline(ours, edges, row, limits))
            rows.append(row)
    return rows


def mace_layout(irreps1: o3.Irreps, irreps2: o3.Irreps, lmax: int) -> Tuple[o3.Irreps, List[tuple]]:
    """(irreps_out, instructions) of MACE's ``tp_out_irreps_with_instructions``: for every irrep
    pair and every ``ir_out`` of their product with l <= ``lmax``, one ``mul1 x ir_out`` output
    block and the weighted instruction ``uvu`` into it; then irreps_out sorted and the instructions
    renumbered and ordered by output block."""
    blocks, instructions = [], []
    for i1, (mul, ir1) in enumerate(irreps1):
        for i2, (_, ir2) in enumerate(irreps2):
            for ir_out in ir1 * ir2:
                if ir_out.l <= lmax:
                    instructions.append((i1, i2, len(blocks), "uvu", True))
                    blocks.append((mul, ir_out))
    irreps_out, permutation, _ = o3.Irreps(blocks).sort()
    renumbered = [(i1, i2, permutation[k], mode, weighted) for i1, i2, k, mode, weighted in instructions]
    return irreps_out, sorted(renumbered, key=lambda instruction: instruction[2])


def one_block_per_path_rows(channels: int, cases: Sequence[Tuple[int, int]], limits: Dict, repeats: int = 3) -> List[Dict]:
    """MACE/NequIP convolution product: C x (0e+...+L) x harmonics (0e+...+L) -> one C x l_out block
    per path (``mace_layout``), per-edge weights; ``cases`` are (L, edges)."""
    rows, generator = [], torch.Generator().manual_seed(3)
    for lmax, edges in cases:
        irreps, sh = feature_irreps(channels, lmax), o3.Irreps.spherical_harmonics(lmax)
        irreps_out, instructions = mace_layout(irreps, sh, lmax)
        ours = TensorProduct(irreps, sh, irreps_out, instructions, shared_weights=False, internal_weights=False)
        theirs = o3.TensorProduct(irreps, sh, irreps_out, instructions, shared_weights=False, internal_weights=False)
        inputs = [torch.randn(edges, irreps.dim, generator=generator), torch.randn(edges, sh.dim, generator=generator),
                  torch.randn(edges, ours.weight_numel, generator=generator)]
        row = {"op": "uvu block/path", "case": f"C={channels} L={lmax} E={edges}", "paths": len(ours.paths)}
        row.update(_timings(ours, theirs, inputs, repeats))
        row.update(roofline(ours, edges, row, limits))
        rows.append(row)
    return rows


def fully_connected_rows(channels: int, lmaxes: Sequence[int], edges: int, limits: Dict, repeats: int = 3,
                         per_sample_edges: int = 1000) -> List[Dict]:
    """Fully connected TP (uvw) C x (0e+...+L) x harmonics -> C x (0e+...+L): with shared internal
    weights on ``edges`` rows, and with per-sample weights (weight_numel per row) on ``per_sample_edges``."""
    rows, generator = [], torch.Generator().manual_seed(1)
    for lmax in lmaxes:
        irreps, sh = feature_irreps(channels, lmax), o3.Irreps.spherical_harmonics(lmax)
        for shared, count in ((True, edges), (False, per_sample_edges)):
            options = {} if shared else {"shared_weights": False, "internal_weights": False}
            theirs = o3.FullyConnectedTensorProduct(irreps, sh, irreps, **options)
            ours = FullyConnectedTensorProduct(irreps, sh, irreps, **options)
            inputs = [torch.randn(count, irreps.dim, generator=generator), torch.randn(count, sh.dim, generator=generator)]
            if shared:
                with torch.no_grad():
                    ours.weight.copy_(theirs.weight)
            else:
                inputs.append(torch.randn(count, ours.weight_numel, generator=generator))
            name = "fully_connected" if shared else "fully_conn/sample"
            row = {"op": name, "case": f"C={channels} L={lmax} E={count}", "paths": len(ours.paths)}
            row.update(_timings(ours, theirs, inputs, repeats))
            row.update(roofline(ours, count, row, limits))
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
    """The rows as a table, with the machine's limits and the roofline columns where computed."""
    lines = [
        f"machine: matmul {limits['matmul_gflops']:.1f} GFLOP/s, copy {limits['copy_gbs']:.1f} GB/s, "
        f"{torch.get_num_threads()} threads, float32",
        f"{'op':<18} {'case':<26} {'fwd e3nn':>9} {'sciml':>8} {'x':>6} {'f+b e3nn':>9} {'sciml':>8} {'x':>6} "
        f"{'MB e3nn':>8} {'sciml':>7} {'GFLOP/s':>8} {'x bound':>8} {'f+b':>6}",
    ]
    for r in rows:
        extra = f" {r['gflops']:>8.1f} {r['above_bound']:>8.1f} {r['above_bound_fb']:>6.1f}" if "gflops" in r else ""
        lines.append(
            f"{r['op']:<18} {r['case']:<26} {r['e3nn_fwd']:>9.2f} {r['sciml_fwd']:>8.2f} {r['e3nn_fwd'] / r['sciml_fwd']:>6.1f} "
            f"{r['e3nn_fb']:>9.2f} {r['sciml_fb']:>8.2f} {r['e3nn_fb'] / r['sciml_fb']:>6.1f} "
            f"{r['e3nn_mb']:>8.1f} {r['sciml_mb']:>7.1f}{extra}"
        )
    lines.append("times in ms (best of runs); x = e3nn time / sciml time; MB = peak memory growth of forward+backward;")
    lines.append("x bound = sciml time / roofline bound max(useful FLOPs / matmul peak, bytes / copy bandwidth), "
                 "forward and forward+backward")
    return "\n".join(lines)

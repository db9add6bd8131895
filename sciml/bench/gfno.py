"""Speed and memory of sciml's FNO-2D and G-FNO-2D (p4, p4m) against the reference's timings.

The batch is the reference's NS training batch: 20 samples of 10 input steps on a 64 x 64 grid
(and 128 x 128), default widths (FNO 20, p4 10, p4m 7), 12 modes, float32, train mode.
"forward+backward" is the backward pass of a mean-squared loss to the parameters, no optimizer
step. Peak memory is the resident-memory growth of one forward+backward in a forked
single-threaded child. The reference (divelab AIRS OpenPDE/G-FNO) was timed earlier on this
machine type (2 threads, best of >= 5 runs) and is only quoted; such timings varied by up to
~40% between runs.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from sciml.bench.timing import best_seconds
from sciml.bench.tp import peak_extra_mb
from sciml.models import build_model

MODELS = ("fno2d", "gfno2d_p4", "gfno2d_p4m")
#: the reference's (forward, forward+backward) seconds, batch 20, T_in 10, by grid size
REFERENCE_SECONDS = {
    64: {"fno2d": (0.13, 0.29), "gfno2d_p4": (0.18, 0.52), "gfno2d_p4m": (0.27, 1.04)},
    128: {"fno2d": (0.53, 1.32), "gfno2d_p4": (1.99, 6.88), "gfno2d_p4m": (3.73, 11.9)},
}


def bench_gfno(sizes: Sequence[int] = (64, 128), batch: int = 20, repeats: int = 3, threads: int = 2,
               memory: bool = True) -> List[Dict]:
    """One row per (size, model): ``params``, best-of-``repeats`` ``forward_s`` and
    ``forward_backward_s``, ``peak_mb`` (NaN without ``memory``) and the quoted
    ``reference_forward_s`` / ``reference_forward_backward_s`` (NaN for sizes not measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for size in sizes:
            x = torch.randn(batch, size, size, 10, generator=torch.Generator().manual_seed(0))
            for name in MODELS:
                torch.manual_seed(0)
                model = build_model(name).train()

                def forward_backward():
                    model.zero_grad(set_to_none=True)
                    model(x).square().mean().backward()

                reference = REFERENCE_SECONDS.get(size, {}).get(name, (float("nan"),) * 2) if batch == 20 else (
                    float("nan"), float("nan"))
                rows.append(dict(
                    model=name, size=size, batch=batch, params=sum(p.numel() for p in model.parameters()),
                    forward_s=best_seconds(lambda: model(x), repeats),
                    forward_backward_s=best_seconds(forward_backward, repeats),
                    peak_mb=peak_extra_mb(forward_backward) if memory else float("nan"),
                    reference_forward_s=reference[0], reference_forward_backward_s=reference[1],
                ))
    finally:
        torch.set_num_threads(previous)
    return rows


def format_gfno_table(rows: List[Dict]) -> str:
    """A text table of times, memory and the ratio sciml / reference (below 1: sciml faster)."""
    lines = [
        "FNO / G-FNO 2D speed, float32 CPU, train mode, best of repeats",
        "  reference = divelab AIRS OpenPDE/G-FNO measured earlier on this machine type (not in this run);",
        "  ratio = sciml time / reference time; < 1: sciml faster",
        f"{'model':<11} {'grid':>7} {'batch':>5} {'params':>8} {'pass':<17} {'sciml':>8} {'reference':>9} {'ratio':>6}"
        f" {'peak MB':>8}",
    ]
    for r in rows:
        for label, key in (("forward", "forward_s"), ("forward+backward", "forward_backward_s")):
            ours, reference = r[key], r[f"reference_{key}"]
            memory = f"{r['peak_mb']:>8.0f}" if key == "forward_backward_s" else ""
            lines.append(f"{r['model']:<11} {r['size']:>3}x{r['size']:<3} {r['batch']:>5} {r['params']:>8} {label:<17}"
                         f" {ours:>7.3f}s {reference:>8.2f}s {ours / reference:>6.2f} {memory}")
    return "\n".join(lines)

"""Speed and memory of sciml's FNO-2D and G-FNO-2D (p4, p4m) against the reference
(divelab AIRS ``OpenPDE/G-FNO``).

The batch is the reference's NS training batch: 20 samples of 10 input steps on a 64 x 64 grid
(and 128 x 128), default widths (FNO 20, p4 10, p4m 7), 12 modes, float32, train mode.
"forward+backward" is the backward pass of a mean-squared loss to the parameters, no optimizer
step. Peak memory is the peak resident-memory growth of one forward+backward in a forked
single-threaded child that first hands its free heap memory back to the system (``malloc_trim``)
and resets its peak (``/proc/self/clear_refs``), so memory freed by earlier runs and reused does
not hide; NaN where that is not available.

With ``reference_source`` (the G-FNO folder) the reference models are loaded into this process
(:mod:`sciml.bench.gfno_runner`), given sciml's weights, and timed on the same batch in the same
run, sciml and reference alternating so that both see the same machine load; the rows then hold
the largest difference between the two outputs as well. Without it the reference's times are
quoted from an earlier measurement on this machine type (2 threads, best of >= 5 runs), which
varied by up to ~40% between runs: only same-run ratios are firm.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from sciml.bench.timing import alternating_best_seconds, peak_extra_mb, torch_threads
from sciml.models import build_model

MODELS = ("fno2d", "gfno2d_p4", "gfno2d_p4m")
#: the reference's (forward, forward+backward) seconds measured earlier, batch 20, T_in 10, by grid size
REFERENCE_SECONDS = {
    64: {"fno2d": (0.13, 0.29), "gfno2d_p4": (0.18, 0.52), "gfno2d_p4m": (0.27, 1.04)},
    128: {"fno2d": (0.53, 1.32), "gfno2d_p4": (1.99, 6.88), "gfno2d_p4m": (3.73, 11.9)},
}
NAN = float("nan")


def _passes(model: torch.nn.Module, x: torch.Tensor):
    def forward():
        return model(x)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    return forward, forward_backward


def bench_gfno(sizes: Sequence[int] = (64, 128), batch: int = 20, repeats: int = 3, threads: int = 2,
               memory: bool = True, reference_source: Optional[str] = None) -> List[Dict]:
    """One row per (size, model): ``params``, best-of-``repeats`` ``forward_s`` and
    ``forward_backward_s``, ``peak_mb`` (NaN without ``memory``) and the reference's
    ``reference_forward_s`` / ``reference_forward_backward_s``: measured now on the same batch with
    ``reference_source`` (``reference_measured`` True; also ``reference_peak_mb``, and
    ``max_abs_difference`` / ``max_relative_difference``, the largest |sciml - reference| of the
    forward outputs on the same weights, absolute and relative to max |reference|), else quoted
    (NaN for sizes or batches not measured)."""
    rows = []
    with torch_threads(threads):
        for size in sizes:
            x = torch.randn(batch, size, size, 10, generator=torch.Generator().manual_seed(0))
            for name in MODELS:
                torch.manual_seed(0)
                model = build_model(name).train()
                forward, forward_backward = _passes(model, x)
                row = dict(model=name, size=size, batch=batch, params=sum(p.numel() for p in model.parameters()),
                           reference_measured=reference_source is not None)
                if reference_source is None:
                    row["forward_s"], row["forward_backward_s"] = alternating_best_seconds([forward, forward_backward],
                                                                                    repeats)
                    quoted = REFERENCE_SECONDS.get(size, {}).get(name) if batch == 20 else None
                    row["reference_forward_s"], row["reference_forward_backward_s"] = quoted or (NAN, NAN)
                    row["reference_peak_mb"] = NAN
                else:
                    from sciml.bench.gfno_runner import build_reference, copy_to_reference

                    reference = copy_to_reference(model, build_reference(name, reference_source).train())
                    with torch.no_grad():
                        ours, theirs = model(x), reference(x).reshape(batch, size, size, 1)
                    difference = float((ours - theirs).abs().max())
                    row["max_abs_difference"] = difference
                    row["max_relative_difference"] = difference / float(theirs.abs().max())
                    reference_forward, reference_forward_backward = _passes(reference, x)
                    (row["forward_s"], row["reference_forward_s"], row["forward_backward_s"],
                     row["reference_forward_backward_s"]) = alternating_best_seconds(
                        [forward, reference_forward, forward_backward, reference_forward_backward], repeats)
                    row["reference_peak_mb"] = peak_extra_mb(reference_forward_backward) if memory else NAN
                row["peak_mb"] = peak_extra_mb(forward_backward) if memory else NAN
                rows.append(row)
    return rows


def format_gfno_table(rows: List[Dict]) -> str:
    """A text table of times, memory and the ratio sciml / reference (below 1: sciml faster)."""
    measured = any(r.get("reference_measured") for r in rows)
    source = ("reference = divelab AIRS OpenPDE/G-FNO timed in this run on the same batch and weights"
              if measured else
              "reference = divelab AIRS OpenPDE/G-FNO QUOTED from an earlier measurement on this machine type "
              "(not this run;\n  such times varied by up to ~40% between runs; --reference-source times it now)")
    lines = [
        "FNO / G-FNO 2D speed, float32 CPU, train mode, best of repeats",
        f"  {source}",
        "  ratio = sciml time / reference time; < 1: sciml faster; peak MB: one forward+backward, single thread",
        f"{'model':<11} {'grid':>7} {'batch':>5} {'params':>8} {'pass':<17} {'sciml':>8} {'reference':>9} {'ratio':>6}"
        f" {'peak MB':>8} {'ref MB':>7}",
    ]
    for r in rows:
        for label, key in (("forward", "forward_s"), ("forward+backward", "forward_backward_s")):
            ours, reference = r[key], r[f"reference_{key}"]
            memory = ""
            if key == "forward_backward_s":
                memory = f"{r['peak_mb']:>8.0f} {r.get('reference_peak_mb', NAN):>7.0f}"
            compared = f"{reference:>8.3f}s {ours / reference:>6.2f}"
            if reference != reference:  # NaN: not measured
                compared = f"{'-':>9} {'-':>6}"
            lines.append(f"{r['model']:<11} {r['size']:>3}x{r['size']:<3} {r['batch']:>5} {r['params']:>8} {label:<17}"
                         f" {ours:>7.3f}s {compared} {memory}")
    if measured:
        lines.append("largest |sciml - reference| of the forward outputs on the same weights (float32):")
        lines += [f"  {r['model']:<11} {r['size']:>3}x{r['size']:<3} {r['max_abs_difference']:.2e}"
                  f" (relative to max |reference|: {r['max_relative_difference']:.2e})" for r in rows]
    return "\n".join(lines)

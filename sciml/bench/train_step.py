"""Eager against compiled training steps on forces and stress, measured in one run.

A step is what the trainer does per batch before the optimizer: the model's outputs with forces
(and stress) kept differentiable, a loss on energy, forces (and stress), and ``loss.backward()``,
which differentiates the forces a second time. The compiled step runs the outputs through
:class:`sciml.train.compile.CompiledOutputs` (inductor); its first call, which traces and compiles,
is timed on its own. Eager and compiled steps then take turns on the same model and batch, so a
change of machine load hits both alike, and each one's fastest, median and slowest times are kept.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch

from sciml.graph import AtomicGraph
from sciml.inference import model_outputs
from sciml.train.compile import CompiledOutputs


def _loss(out: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Squared outputs: the cost of a loss on labels without needing them."""
    loss = out["energy"].square().mean() + out["forces"].square().mean()
    return loss + out["stress"].square().mean() if "stress" in out else loss


def compare_training_steps(model: torch.nn.Module, batch: AtomicGraph, compute_stress: bool,
                           repeats: int = 10) -> Dict[str, object]:
    """Time ``repeats`` eager and compiled training steps of ``model`` (put in train mode) on ``batch``.

    Returns ``eager_ms`` and ``compiled_ms`` (fastest, median and slowest step, ms), ``ratio``
    (compiled / eager median), ``compile_s`` (the first compiled step: trace and compile, s) and
    ``loss_diff``, the relative difference of the two steps' first losses (same weights).
    """
    model.train()
    compiled = CompiledOutputs(model, compute_forces=True, compute_stress=compute_stress)

    def step(outputs: Callable[[AtomicGraph], Dict[str, torch.Tensor]]) -> float:
        model.zero_grad(set_to_none=True)
        loss = _loss(outputs(batch))
        loss.backward()
        return float(loss.detach())

    def eager(graph: AtomicGraph) -> Dict[str, torch.Tensor]:
        return model_outputs(model, graph, True, compute_stress)

    torch.manual_seed(0)
    eager_loss = step(eager)
    torch.manual_seed(0)
    start = time.perf_counter()
    compiled_loss = step(compiled)
    compile_s = time.perf_counter() - start
    times: Dict[str, List[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        for name, outputs in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            step(outputs)
            times[name].append((time.perf_counter() - start) * 1e3)
    spread = {name: (min(t), statistics.median(t), max(t)) for name, t in times.items()}
    return dict(eager_ms=spread["eager"], compiled_ms=spread["compiled"], ratio=spread["compiled"][1] / spread["eager"][1],
                compile_s=compile_s, loss_diff=abs(compiled_loss - eager_loss) / abs(eager_loss), repeats=repeats)


def format_training_step_rows(title: str, rows: List[Dict[str, object]]) -> str:
    """A table of :func:`compare_training_steps` results, one row per ``rows[i]["case"]``."""
    lines = [title,
             "  training step = outputs with differentiable forces (and stress), loss, backward (double backward);",
             "  eager and compiled steps alternate; ms/step as fastest / median / slowest; ratio of medians",
             f"{'case':<28}{'eager ms':>22}{'compiled ms':>22}{'ratio':>7}{'compile s':>11}{'loss rel diff':>15}"]
    for r in rows:
        eager, comp = r["eager_ms"], r["compiled_ms"]
        lines.append(f"{r['case']:<28}{eager[0]:>7.1f} /{eager[1]:>6.1f} /{eager[2]:>6.1f}"
                     f"{comp[0]:>7.1f} /{comp[1]:>6.1f} /{comp[2]:>6.1f}{r['ratio']:>7.2f}{r['compile_s']:>11.1f}"
                     f"{r['loss_diff']:>15.1e}")
    lines.append("goal: compiled / eager <= 0.8")
    return "\n".join(lines)

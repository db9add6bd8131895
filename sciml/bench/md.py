"""MD throughput of the ASE calculator: steps/s and atom-steps/s for growing systems."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch


def bench_md(
    sizes: Sequence[int] = (32, 256, 2048),
    steps: int = 20,
    model_name: str = "egnn",
    checkpoint: Optional[str] = None,
    threads: int = 2,
) -> List[Dict]:
    """NVE steps/s of a sciml model (random weights unless ``checkpoint``) on periodic fcc Cu.

    Sizes are rounded to whole 4-atom cubic cells (32 = 2^3 cells, 256 = 4^3, 2048 = 8^3).
    """
    from ase.build import bulk

    from sciml.calculator import SciMLCalculator
    from sciml.models import build_model
    from sciml.simulate import run_md

    torch.set_num_threads(threads)
    rows = []
    for size in sizes:
        cells = max(1, round((size / 4) ** (1 / 3)))
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(cells)
        if checkpoint:
            calc = SciMLCalculator.from_checkpoint(checkpoint, device="cpu", dtype="float32")
        else:
            torch.manual_seed(0)
            calc = SciMLCalculator(build_model(model_name), device="cpu", dtype="float32")
        atoms.calc = calc
        atoms.get_forces()  # warm-up (graph build, first forward/backward)
        report = run_md(atoms, steps=steps, timestep_fs=1.0, temperature_K=300.0)
        rate = steps / report.seconds
        rows.append({"atoms": len(atoms), "edges_per_atom": _edges_per_atom(atoms, calc), "steps_per_s": rate,
                     "atom_steps_per_s": rate * len(atoms)})
    return rows


def _edges_per_atom(atoms, calc) -> float:
    from sciml.graph import neighbor_list

    i, _, _ = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, calc.cutoff, calc.max_neighbors)
    return len(i) / len(atoms)


def format_md_table(rows: List[Dict], label: str) -> str:
    lines = [f"MD throughput, NVE, {label}, periodic fcc Cu", f"{'atoms':>7} {'edges/atom':>11} {'steps/s':>9} {'atom-steps/s':>13}"]
    for r in rows:
        lines.append(f"{r['atoms']:>7} {r['edges_per_atom']:>11.1f} {r['steps_per_s']:>9.2f} {r['atom_steps_per_s']:>13.0f}")
    return "\n".join(lines)

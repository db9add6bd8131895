"""Benchmark of the neighbour list against ase (Python/numpy) and matscipy (C)."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from sciml.bench.timing import best_seconds


def fcc_copper(n_atoms: int, rattle: float = 0.05, seed: int = 0):
    """A rattled periodic fcc copper box with about ``n_atoms`` atoms (a = 3.6 Å)."""
    from ase.build import bulk

    cells = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((cells, cells, max(1, round(n_atoms / (4 * cells * cells)))))
    atoms.rattle(rattle, seed=seed)
    return atoms


def bench_neighbors(sizes: Sequence[int] = (1_000, 10_000, 100_000), cutoff: float = 5.0, repeats: int = 3) -> List[Dict]:
    """Time sciml, ase and (if installed) matscipy on periodic fcc boxes; one row per size."""
    import torch
    from ase.neighborlist import primitive_neighbor_list

    from sciml.graph.neighbors import neighbor_list

    try:
        from matscipy.neighbours import neighbour_list as matscipy_list
    except ImportError:
        matscipy_list = None
    rows = []
    for size in sizes:
        atoms = fcc_copper(size)
        pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
        pos_t, cell_t = torch.as_tensor(pos), torch.as_tensor(cell)
        row = {"atoms": len(atoms), "pairs": len(neighbor_list(pos_t, cell_t, pbc, cutoff)[0])}
        row["sciml_s"] = best_seconds(lambda: neighbor_list(pos_t, cell_t, pbc, cutoff), repeats)
        row["ase_s"] = best_seconds(
            lambda: primitive_neighbor_list("ijS", pbc, cell, pos, cutoff, self_interaction=False), max(1, repeats - 2)
        )
        row["matscipy_s"] = best_seconds(lambda: matscipy_list("ijS", atoms, cutoff), repeats) if matscipy_list else float("nan")
        rows.append(row)
    return rows


def format_neighbor_table(rows: List[Dict], cutoff: float) -> str:
    """A text table with times and ratios (sciml time / other time; below 1 means sciml is faster)."""
    lines = [
        f"neighbour list, periodic fcc Cu, cutoff {cutoff} Å (best of repeats)",
        f"{'atoms':>8} {'pairs':>10} {'sciml s':>9} {'ase s':>9} {'matscipy s':>11} {'sciml/ase':>10} {'sciml/matscipy':>15}",
    ]
    for r in rows:
        lines.append(
            f"{r['atoms']:>8} {r['pairs']:>10} {r['sciml_s']:>9.4f} {r['ase_s']:>9.4f} {r['matscipy_s']:>11.4f} "
            f"{r['sciml_s'] / r['ase_s']:>10.2f} {r['sciml_s'] / r['matscipy_s']:>15.2f}"
        )
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        exponent = np.log(b["sciml_s"] / a["sciml_s"]) / np.log(b["atoms"] / a["atoms"])
        lines.append(f"sciml scaling exponent (time ~ N^k) from {a['atoms']} to {b['atoms']} atoms: k = {exponent:.2f}")
    return "\n".join(lines)

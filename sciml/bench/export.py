"""Inference time of exported (AOTInductor) packages against the eager models they came from.

EGNN (the default options) and a small conservative EquiformerV2 (:data:`EQUIFORMER_SMALL`) with
random weights, in float32 on the CPU: energy, forces and virial/stress of rattled fcc Cu
supercells. The eager model is called with graphs built beforehand (as the calculator calls it,
default kernel backends) and the package with the same graphs' tensors, so neither pays for the
neighbour search. Each round times the two taking turns (best of ``timing_repeats``); the table gives
the best round and the spread of the rounds' bests (max / min - 1).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from ase.build import bulk

from sciml.bench.timing import alternating_best_seconds
from sciml.graph import AtomicGraph
from sciml.models import build_model

EQUIFORMER_SMALL = dict(num_layers=2, sphere_channels=32, attn_hidden_channels=32, num_heads=4,
                        attn_alpha_channels=8, attn_value_channels=8, ffn_hidden_channels=32, lmax=2, mmax=1,
                        grid_resolution=8, edge_channels=32, num_distance_basis=64, cutoff=5.0, max_neighbors=None,
                        alpha_drop=0.0, drop_path_rate=0.0, direct_forces=False)  # fmt: skip
MODELS: Dict[str, dict] = {"egnn": {}, "equiformer_v2": EQUIFORMER_SMALL}


def bench_export(models: Sequence[str] = tuple(MODELS), supercells: Sequence[int] = (2, 3), rounds: int = 3,
                 timing_repeats: int = 5) -> List[dict]:
    """One row per model and structure: atoms, edges, eager and exported seconds (best round),
    their ratio, the spread of each over ``rounds``, and the export time of the model (s).

    ``supercells``: n x n x n copies of the 4-atom cubic fcc cell (4 n^3 atoms).
    """
    from sciml.deploy.export import export_model, load_exported

    rows = []
    for name in models:
        torch.manual_seed(0)
        model = build_model(name, **MODELS[name]).float().eval()
        with tempfile.TemporaryDirectory() as scratch:
            start = time.perf_counter()
            package = load_exported(export_model(model, Path(scratch) / f"{name}.pt2"))
            export_seconds = time.perf_counter() - start
        for n in supercells:
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (n, n, n)
            atoms.rattle(0.05, seed=n)
            graph = AtomicGraph.from_ase(atoms, model.graph_spec, dtype=torch.float32)
            inputs = (graph.positions, graph.atomic_numbers, graph.cell[0], graph.edge_index,
                      graph.cell_shifts.to(torch.float32))

            def eager():
                return model(graph, compute_forces=True, compute_stress=True)

            def exported():
                return package(*inputs)

            times = [alternating_best_seconds([eager, exported], timing_repeats) for _ in range(rounds)]
            eager_s, exported_s = (min(t[k] for t in times) for k in range(2))
            spread = [max(t[k] for t in times) / min(t[k] for t in times) - 1 for k in range(2)]
            rows.append(dict(model=name, atoms=len(atoms), edges=graph.num_edges, eager_s=eager_s,
                             exported_s=exported_s, ratio=exported_s / eager_s, eager_spread=spread[0],
                             exported_spread=spread[1], export_s=export_seconds))
    return rows


def format_export_table(rows: List[dict]) -> str:
    lines = [f"{'model':<14}{'atoms':>6}{'edges':>8}{'eager ms':>11}{'exported ms':>13}{'ratio':>7}"
             f"{'spread':>15}{'export s':>10}"]
    for r in rows:
        spread = f"{100 * r['eager_spread']:.0f}%/{100 * r['exported_spread']:.0f}%"
        lines.append(f"{r['model']:<14}{r['atoms']:>6}{r['edges']:>8}{1e3 * r['eager_s']:>11.1f}"
                     f"{1e3 * r['exported_s']:>13.1f}{r['ratio']:>7.2f}{spread:>15}{r['export_s']:>10.0f}")
    lines.append(f"float32 on the CPU, {torch.get_num_threads()} thread(s); energy, forces and stress; ratio = exported / "
                 f"eager; spread = eager/exported variation of the rounds' bests")
    return "\n".join(lines)

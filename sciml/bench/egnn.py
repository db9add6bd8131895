"""Speed of sciml's EGNN against the reference code's timings and a reference-style baseline.

Two batches, both as in the reference experiments:

- ``nbody``: the n-body velocity model (64 features, 4 layers) on 100 systems of 5 particles,
  fully connected (2,000 edges);
- ``qm9``: the QM9 preset (128 features, 7 layers, attention, no coordinate updates) on 96
  molecules of 18 atoms, fully connected including each atom's self-pair as the reference's
  padded batches do (31,104 edges), without envelope.

"forward" runs the model with autograd recording (as in training); "forward+backward" adds the
backward pass of a loss to the parameters (no optimizer step). The baseline runs the same
weights the way the reference code does (one Linear over concatenated per-edge inputs, scatter
sums by ``index_add``, nothing fused) in the same process; the reference's own times were
measured earlier on this machine type and are only quoted.

``train_step`` mode (:func:`bench_egnn_training_step`): eager against compiled training steps
with forces and stress (see :mod:`sciml.bench.train_step`) of the default EGNN on rattled
periodic copper.
"""

from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional

import torch
from ase.build import bulk
from torch.nn import functional as F

from sciml.bench.timing import best_seconds, torch_threads
from sciml.bench.train_step import compare_training_steps
from sciml.graph import AtomicGraph
from sciml.models import build_model
from sciml.models.egnn import EGNNDynamics, EGNNEnergyModel, EGNNLayer

# The project's reference-speed notes: vgsatorras/egnn on a 2-core machine of this type,
# float32, 2 threads, best of >= 5 runs: (forward, forward+backward) in seconds.
REFERENCE_SECONDS = {"nbody": (6.2e-3, 20.7e-3), "qm9": (0.48, 1.03)}


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    return best_seconds(fn, repeats, min_seconds=1.0, warmup=2)


def _complete_graphs(
    num_graphs: int, atoms: int, self_pairs: bool, seed: int, atom_properties: Optional[Dict[str, torch.Tensor]] = None
) -> AtomicGraph:
    """``num_graphs`` molecules of ``atoms`` atoms (H, C, N, O, F) with every pair connected."""
    generator = torch.Generator().manual_seed(seed)
    n = num_graphs * atoms
    local_i, local_j = torch.meshgrid(torch.arange(atoms), torch.arange(atoms), indexing="ij")
    keep = torch.ones_like(local_i, dtype=torch.bool) if self_pairs else local_i != local_j
    offsets = (torch.arange(num_graphs) * atoms).view(-1, 1)
    edge_index = torch.stack([(local_i[keep] + offsets).reshape(-1), (local_j[keep] + offsets).reshape(-1)])
    batch = torch.arange(num_graphs).repeat_interleave(atoms)
    elements = torch.tensor([1, 6, 7, 8, 9])
    return AtomicGraph(
        positions=torch.randn(n, 3, generator=generator) * 1.5,
        atomic_numbers=elements[torch.randint(0, 5, (n,), generator=generator)],
        cell=torch.zeros(num_graphs, 3, 3),
        pbc=torch.zeros(num_graphs, 3, dtype=torch.bool),
        batch=batch,
        ptr=torch.arange(num_graphs + 1) * atoms,
        edge_index=edge_index,
        cell_shifts=torch.zeros(edge_index.shape[1], 3, dtype=torch.int64),
        atom_properties=atom_properties or {},
    )


def _reference_style_layer(layer: EGNNLayer, h, x, edge_index, edge_attr=None, velocities=None):
    """One E_GCL(_vel) step computed as the reference does, with ``layer``'s weights."""
    row, col = edge_index
    diff = x[row] - x[col]
    radial = diff.square().sum(1, keepdim=True)
    inputs = [h[row], h[col], radial] + ([edge_attr] if edge_attr is not None else [])
    messages = F.silu(layer.edge_out(F.silu(layer.edge_in(torch.cat(inputs, dim=1)))))
    if layer.gate is not None:
        messages = messages * torch.sigmoid(layer.gate(messages))
    if layer.coord_mlp is not None:
        trans = diff * layer.coord_mlp(messages)
        total = torch.zeros_like(x).index_add(0, row, trans)
        count = torch.zeros_like(x).index_add(0, row, torch.ones_like(trans))
        x = x + total / count.clamp(min=1)
    if layer.velocity_mlp is not None:
        x = x + layer.velocity_mlp(h) * velocities
    aggregated = torch.zeros_like(h).index_add(0, row, messages)
    return h + layer.node_mlp(torch.cat([h, aggregated], dim=1)), x


def reference_style_forward(model: torch.nn.Module, graph: AtomicGraph) -> Dict[str, torch.Tensor]:
    """The baseline: ``model``'s computation in the reference's style on a molecular graph.

    Supports the settings the reference has (no envelope, normalize or tanh, no periodic images);
    returns ``positions`` for :class:`EGNNDynamics` and ``energy`` for :class:`EGNNEnergyModel`.
    """
    row, col = graph.edge_index
    x = graph.positions
    if isinstance(model, EGNNDynamics):
        velocities = graph.atom_properties["velocities"]
        charges = graph.atom_properties["charges"].reshape(-1, 1)
        edge_attr = torch.cat([charges[row] * charges[col], (x[row] - x[col]).square().sum(1, keepdim=True)], dim=1)
        h = model.embedding(velocities.norm(dim=1, keepdim=True))
        for layer in model.layers:
            h, x = _reference_style_layer(layer, h, x, graph.edge_index, edge_attr, velocities)
        return {"positions": x}
    if not isinstance(model, EGNNEnergyModel) or model.envelope is not None:
        raise ValueError("the reference-style baseline runs EGNN models without envelope only")
    h = model.embedding(graph.atomic_numbers)
    for layer in model.layers:
        h, x = _reference_style_layer(layer, h, x, graph.edge_index)
    return {"energy": model.head(model.readout(h).squeeze(1), graph)["energy"]}


class _Case(NamedTuple):
    model: torch.nn.Module
    graph: AtomicGraph
    run: Callable[[], Dict[str, torch.Tensor]]  # sciml's forward pass
    output: str  # the output compared with the baseline
    loss: Callable[[Dict[str, torch.Tensor]], torch.Tensor]


def _case(name: str, seed: int) -> _Case:
    """One benchmark case, float32 with fixed random weights."""
    torch.manual_seed(seed)
    if name == "nbody":
        n = 100 * 5
        properties = {"velocities": torch.randn(n, 3), "charges": torch.randint(0, 2, (n,)).float() * 2 - 1}
        graph = _complete_graphs(100, 5, self_pairs=False, seed=seed, atom_properties=properties)
        target = graph.positions + 0.1 * torch.randn(n, 3)
        model = build_model("egnn_nbody")
        return _Case(
            model, graph, lambda: model(graph), "positions", lambda out: (out["positions"] - target).square().mean()
        )
    graph = _complete_graphs(96, 18, self_pairs=True, seed=seed)
    model = build_model("egnn", preset="qm9", cutoff=None, envelope_exponent=None)
    return _Case(
        model, graph, lambda: model(graph, compute_forces=False), "energy", lambda out: out["energy"].abs().mean()
    )


def _time_case(name: str, repeats: int) -> Dict:
    model, graph, ours, output, loss = _case(name, seed=0)
    model.train()

    def baseline() -> Dict[str, torch.Tensor]:
        return reference_style_forward(model, graph)

    def step(run: Callable[[], Dict[str, torch.Tensor]]) -> None:
        model.zero_grad(set_to_none=True)
        loss(run()).backward()

    with torch.no_grad():
        difference = float((ours()[output] - baseline()[output]).abs().max())
    forward, backward = REFERENCE_SECONDS[name]
    return {
        "case": name,
        "edges": graph.num_edges,
        "params": sum(p.numel() for p in model.parameters()),
        "sciml_forward_s": _best_time(ours, repeats),
        "sciml_backward_s": _best_time(lambda: step(ours), repeats),
        "baseline_forward_s": _best_time(baseline, repeats),
        "baseline_backward_s": _best_time(lambda: step(baseline), repeats),
        "reference_forward_s": forward,
        "reference_backward_s": backward,
        "max_abs_diff": difference,
    }


def bench_egnn(repeats: int = 5, threads: int = 2) -> List[Dict]:
    """Time sciml's EGNN and the reference-style baseline on the ``nbody`` and ``qm9`` batches.

    Returns one row per case with ``edges``, ``params``, best-of-``repeats`` times in seconds
    (``sciml_forward_s``, ``sciml_backward_s`` for forward+backward, the same for
    ``baseline_``), the quoted ``reference_`` times and ``max_abs_diff``, the largest difference
    between sciml's and the baseline's outputs (they compute the same function).
    """
    with torch_threads(threads):
        return [_time_case(name, repeats) for name in ("nbody", "qm9")]


def bench_egnn_training_step(structures: int = 4, repeats: int = 10, threads: int = 2) -> Dict[str, object]:
    """Eager against compiled training steps with forces and stress of the default EGNN (128
    features, 4 layers, 5 Å) on ``structures`` rattled fcc Cu cells of 32 atoms: the result of
    :func:`~sciml.bench.train_step.compare_training_steps` plus ``case``."""
    with torch_threads(threads):
        torch.manual_seed(0)
        model = build_model("egnn")
        cells = []
        for seed in range(structures):
            atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
            atoms.rattle(0.05, seed=seed)
            cells.append(AtomicGraph.from_ase(atoms, cutoff=model.cutoff))
        batch = AtomicGraph.collate(cells)
        case = f"egnn {structures}x{len(atoms)} Cu, {batch.num_edges} edges"
        return {"case": case, **compare_training_steps(model, batch, compute_stress=True, repeats=repeats)}


def format_egnn_table(rows: List[Dict]) -> str:
    """A text table of times and ratios (sciml time / other time; below 1 means sciml is faster)."""
    lines = [
        "EGNN speed, float32 CPU, best of repeats, forward with autograd recording (as in training)",
        "  ratio = sciml time / other time; < 1: sciml faster",
        "  reference = vgsatorras/egnn measured earlier on this machine type, not in this run;",
        "  baseline = the same weights run in the reference's style (concat per-edge MLP, index_add), this run",
        (
            f"{'case':<6} {'edges':>7} {'params':>8} {'pass':<17} {'sciml':>9} {'baseline':>9} {'reference':>9} "
            f"{'vs base':>8} {'vs ref':>7}"
        ),
    ]
    for r in rows:
        for label, key in (("forward", "forward_s"), ("forward+backward", "backward_s")):
            ours, base, ref = r[f"sciml_{key}"], r[f"baseline_{key}"], r[f"reference_{key}"]
            lines.append(
                f"{r['case']:<6} {r['edges']:>7} {r['params']:>8} {label:<17} {ours * 1e3:>7.2f}ms {base * 1e3:>7.2f}ms"
                f" {ref * 1e3:>7.1f}ms {ours / base:>8.2f} {ours / ref:>7.2f}"
            )
        lines.append(f"{'':<6} sciml and baseline outputs differ by at most {r['max_abs_diff']:.1e}")
    return "\n".join(lines)

"""Speed and memory of sciml's iComFormer and eComFormer, and their agreement with the reference.

The batch is a fixed set of small random crystals (:func:`bench_crystals`: pyxtal
``from_random`` in random space groups, Cu/Au/Ag/Ni/Al, 1-8 atoms per cell, about 5 on average,
seed 0, unrelaxed; random triclinic cells where pyxtal is not installed), like the reference
timing batch (64 crystals, 312 atoms). Models have the
paper's defaults (k = 25, 256 features; iComFormer 4 node layers, eComFormer 3) and random
weights (seed 0); everything runs in float32 on the CPU with ``threads`` threads.

Measured for each model, on the first ``crystals`` crystals (one batch):

* ``graph``: building the batch's crystal graph (``AtomicGraph.from_ase(atoms, model.graph_spec)``:
  k-NN with ties and the lattice frame);
* ``forward`` and ``forward_backward`` (loss = output.sum(), gradients to the parameters, no
  optimizer step), in train mode (BatchNorm with batch statistics), as in training, and
  ``forward_backward_bf16`` under ``torch.autocast("cpu", torch.bfloat16)``, with the bf16
  output's max difference from float32 (eval mode);
* ``peak_mb``: resident-memory growth of one forward+backward in a forked single-threaded child;
* ``epoch``: one training epoch over ``train_crystals`` crystals (graphs built beforehand;
  shuffled batches of ``batch_size`` collated in the loop, AdamW lr 1e-3, weight decay 1e-5, MSE
  against fixed random targets), the fastest of ``epochs`` after one warm-up epoch.

With ``reference_python`` and ``reference_source`` the reference implementation (divelab AIRS
``OpenMat/ComFormer``) runs in the same run through :mod:`sciml.bench.comformer_runner` in that
interpreter, on the same weights (:func:`reference_state_dict`) and the same graph
(:func:`reference_inputs`; sciml's model then uses ``lattice_self_loops="both"``, the reference's
self-loops, and ``chirality=False``): its forward and forward+backward times (train mode, as above) give the ratios
sciml/reference, and the eval-mode outputs (BatchNorm running statistics) are compared.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from sciml.bench.timing import best_seconds, peak_extra_mb, torch_threads
from sciml.graph import AtomicGraph
from sciml.graph.geometry import edge_geometry
from sciml.models import build_model

#: The reference's model class names, keyed by sciml's model names.
REFERENCE_NAMES = {"icomformer": "iComformer", "ecomformer": "eComformer"}
#: Parameter counts: the paper's Table 4 (iComFormer with 4 layers; the full eComFormer, whose
#: AIRS default config is the paper's "eComFormer-half", 5.6M) and the AIRS code's defaults.
PAPER_PARAMETERS = {"icomformer": 5.0e6, "ecomformer": 12.4e6}
REFERENCE_PARAMETERS = {"icomformer": 4_966_497, "ecomformer": 5_583_809}
#: The reference on this machine type (shared/reference/reference-speed.md): 64 crystals, 312
#: atoms, 10,536 edges, float32, 2 threads; seconds. Graph construction: jarvis-tools based.
RECORDED_REFERENCE_SECONDS = {
    "icomformer": {"forward": 1.07, "forward_backward": 2.95, "graph": 1.02},
    "ecomformer": {"forward": 0.82, "forward_backward": 2.67, "graph": 1.02},
}
DEFAULT_ELEMENTS = ("Cu", "Au", "Ag", "Ni", "Al")


def bench_crystals(count: int, seed: int = 0, elements: Sequence[str] = DEFAULT_ELEMENTS, max_atoms: int = 8):
    """``count`` random unrelaxed crystals (ase.Atoms), the same for a seed.

    Each draws 1-``max_atoms`` atoms of one or two elements. With pyxtal installed, pyxtal places
    them (``from_random``, default minimum distances) in a random space group that can hold the
    composition (its Wyckoff check; P1 if none of 8 draws can); without it (pyxtal is optional)
    in a random triclinic cell (lengths 0.8-1.25 x (16 Å^3 N)^(1/3), angles 75-105 degrees) at
    random positions, no two atoms or images closer than 2 Å, so these crystals have no symmetry.
    """
    try:
        from pyxtal import pyxtal
        from pyxtal.symmetry import Group
    except ImportError:
        pyxtal = None
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        atoms_count = int(rng.integers(1, max_atoms + 1))
        species_count = 1 if atoms_count == 1 else int(rng.integers(1, 3))
        species = [str(s) for s in rng.choice(list(elements), size=species_count, replace=False)]
        split = int(rng.integers(1, atoms_count)) if species_count == 2 else atoms_count
        counts = [split, atoms_count - split][:species_count]
        if pyxtal is None:
            atoms = _random_cell_crystal(rng, [s for s, c in zip(species, counts) for _ in range(c)])
        else:
            groups = [int(g) for g in rng.integers(1, 231, size=8)] + [1]
            group = next(g for g in groups if Group(g).check_compatible(counts)[0])
            crystal = pyxtal()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    crystal.from_random(3, group, species, counts, random_state=int(rng.integers(2**31)))
            except Exception:  # noqa: BLE001  (pyxtal's placement can fail for a draw: draw again)
                continue
            atoms = crystal.to_ase() if crystal.valid else None
        if atoms is not None:
            atoms.pbc = True
            out.append(atoms)
    return out


def _random_cell_crystal(rng: np.random.Generator, symbols: List[str], min_distance: float = 2.0):
    """Random triclinic cell, atoms placed one by one at random positions at least ``min_distance``
    from the others and all images (see :func:`bench_crystals`); None if a placement fails."""
    import ase
    from ase.geometry import cellpar_to_cell, get_distances

    size = (16.0 * len(symbols)) ** (1 / 3)
    cell = cellpar_to_cell(np.concatenate([size * rng.uniform(0.8, 1.25, 3), rng.uniform(75, 105, 3)]))
    images = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)])
    if np.linalg.norm(images @ cell, axis=1).min() < min_distance:
        return None
    positions = np.zeros((0, 3))
    for _ in symbols:
        for _ in range(50):
            trial = rng.random(3) @ cell
            if len(positions) == 0 or get_distances(trial, positions, cell=cell, pbc=True)[1].min() >= min_distance:
                positions = np.vstack([positions, trial])
                break
        else:
            return None
    return ase.Atoms(symbols, positions=positions, cell=cell, pbc=True)


def reference_state_dict(model) -> Dict[str, torch.Tensor]:
    """sciml's ComFormer weights under the reference's names (divelab AIRS ``comformer.py``).

    The renames: ``rbf.basis.centres``/``rbf.linear`` -> ``rbf.0.centers``/``rbf.1`` (likewise
    ``rbf_angle``), ``head.mlp.0`` -> ``fc.0``, ``head.mlp.2`` -> ``fc_out``; the CGCNN table is
    dropped (the reference reads features from the batch). The reference's two unused iComFormer
    parameters (``edge_update_layer.lemb`` and ``lin_edge_len``) are filled with zeros. The
    head's de-standardisation must be the identity (the reference has none).
    """
    state = {}
    for key, value in model.state_dict().items():
        if key == "atom_features" or "._compiled_main" in key:  # e3nn's own constants: the reference makes them
            continue
        if key in ("head.mean", "head.std"):
            if float(value) != (0.0 if key == "head.mean" else 1.0):
                raise ValueError(f"the reference has no target standardisation, but {key} = {float(value)}")
            continue
        for old, new in (("rbf.basis.centres", "rbf.0.centers"), ("rbf.linear.", "rbf.1."),
                         ("rbf_angle.basis.centres", "rbf_angle.0.centers"), ("rbf_angle.linear.", "rbf_angle.1."),
                         ("head.mlp.0.", "fc.0."), ("head.mlp.2.", "fc_out.")):
            if key.startswith(old):
                key = new + key[len(old):]
                break
        state[key] = value.detach().clone()
    if model.model_name == "icomformer":
        features = model.options.features
        state["edge_update_layer.lemb.weight"] = torch.zeros(3, 32)
        state["edge_update_layer.lin_edge_len.weight"] = torch.zeros(features, features + 32)
        state["edge_update_layer.lin_edge_len.bias"] = torch.zeros(features)
    return state


def reference_inputs(model, graph: AtomicGraph) -> Dict[str, torch.Tensor]:
    """The reference's PyG batch arrays for ``graph`` (see :mod:`sciml.bench.comformer_runner`).

    sciml's edge (centre i, neighbour j, d = x_j - x_i) is the reference's edge u = j -> v = i
    with r = -d; the reference's self-loops (+v_k and -v_k of every atom, sciml's
    ``lattice_self_loops="both"``) are appended, atom by atom. ``edge_nei`` is every edge's
    crystal frame (v1, v2, v3).
    """
    with torch.no_grad():
        vectors = edge_geometry(graph).vectors
        frame = graph.lattice_frame.to(graph.cell.dtype) @ graph.cell  # (B, 3, 3) rows v1, v2, v3
        loops = frame[graph.batch].reshape(-1, 3)
        loops = torch.stack([loops, -loops], 1).reshape(-1, 3)
        atoms = torch.arange(graph.num_nodes).repeat_interleave(6)
        centre = torch.cat([graph.edge_index[0], atoms])
        neighbour = torch.cat([graph.edge_index[1], atoms])
        d = torch.cat([vectors, loops])
        return dict(x=model.atom_features[graph.atomic_numbers].float(), batch=graph.batch.clone(),
                    edge_index=torch.stack([neighbour, centre]), edge_attr=(-d).float(),
                    edge_nei=frame[graph.batch[centre]].float())


def run_reference(python: str, source: str, models: Dict[str, object], graph: AtomicGraph, repeats: int = 3,
                  threads: int = 2, intermediates: bool = False) -> Dict[str, dict]:
    """Run the reference on ``models``' weights ({sciml name: model}) and ``graph`` in ``python``;
    returns the runner's result per sciml name (``output``, ``parameters``, ``forward_s``, ...)."""
    inputs = reference_inputs(next(iter(models.values())), graph)
    inputs["models"] = {REFERENCE_NAMES[name]: reference_state_dict(model) for name, model in models.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path_in, path_out = Path(tmp) / "batch.pt", Path(tmp) / "reference.pt"
        torch.save(inputs, path_in)
        runner = Path(__file__).with_name("comformer_runner.py")
        command = [python, str(runner), "--source", str(source), "--input", str(path_in), "--output", str(path_out),
                   "--repeats", str(repeats), "--threads", str(threads)] + (["--intermediates"] if intermediates else [])
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"ComFormer reference runner failed ({python}): {' | '.join(tail)}")
        report = torch.load(path_out, weights_only=True)
    return {name: report[REFERENCE_NAMES[name]] for name in models}


def bench_comformer(crystals: int = 64, train_crystals: int = 256, batch_size: int = 64, epochs: int = 1,
                    repeats: int = 3, threads: int = 2, reference_python: Optional[str] = None,
                    reference_source: Optional[str] = None, models: Sequence[str] = ("icomformer", "ecomformer"),
                    model_options: Optional[dict] = None) -> Dict[str, object]:
    """Times (s), peak memory (MB), parameter counts and, with the reference, its times and the
    output differences, per model (see the module docstring). ``model_options`` (e.g. smaller
    widths) apply to sciml's models only and rule out the reference, which has fixed defaults."""
    if (reference_python is None) != (reference_source is None):
        raise ValueError("the reference needs both reference_python and reference_source")
    if reference_python and model_options:
        raise ValueError("the reference runs its default configuration: no model_options with it")
    with torch_threads(threads):
        return _bench(crystals, train_crystals, batch_size, epochs, repeats, threads, reference_python,
                      reference_source, models, model_options)


def _bench(crystals, train_crystals, batch_size, epochs, repeats, threads, reference_python, reference_source,
           models, model_options) -> Dict[str, object]:
    frames = bench_crystals(max(crystals, train_crystals))
    result: Dict[str, object] = dict(crystals=crystals, atoms=sum(len(a) for a in frames[:crystals]),
                                     train_crystals=train_crystals, batch_size=batch_size, threads=threads, models={})
    for name in models:
        torch.manual_seed(0)
        model = build_model(name, **(model_options or {}))
        start = time.perf_counter()
        graph = AtomicGraph.from_ase(frames[:crystals], model.graph_spec)
        graph_seconds = time.perf_counter() - start
        row = dict(parameters=sum(p.numel() for p in model.parameters()), graph=graph_seconds,
                   edges=graph.num_edges, **_measure(model, graph, repeats),
                   epoch=_epoch_seconds(model, frames[:train_crystals], batch_size, epochs))
        if reference_python:
            # the reference's architecture: both self-loops, no chirality feature (its weights are left out)
            both = build_model(name, **(model_options or {}), lattice_self_loops="both", chirality=False)
            both.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("chirality_embedding.")})
            row["both"] = _measure(both, graph, repeats, memory=False)
            row["reference_edges"] = graph.num_edges + 6 * graph.num_nodes
            reference = run_reference(reference_python, reference_source, {name: both}, graph, repeats, threads)[name]
            both.eval()
            with torch.no_grad():
                ours = both(graph)[both.target]
            theirs = reference["output"]
            row["reference"] = dict(parameters=reference["parameters"], forward=reference["forward_s"],
                                    forward_backward=reference["forward_backward_s"],
                                    max_diff=float((ours - theirs).abs().max()),
                                    scale=float(theirs.abs().max()))
        result["models"][name] = row
    return result


def _measure(model, graph: AtomicGraph, repeats: int, bf16: bool = True, memory: bool = True) -> Dict[str, float]:
    """Train-mode forward and forward+backward times; bf16 autocast and peak memory as asked."""
    target = model.target
    state = {k: v.clone() for k, v in model.state_dict().items()}  # train mode moves BatchNorm statistics
    model.train()

    def forward():
        return model(graph)[target]

    def forward_backward():
        model.zero_grad(set_to_none=True)
        forward().sum().backward()

    def forward_backward_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forward_backward()

    row = dict(forward=best_seconds(forward, repeats), forward_backward=best_seconds(forward_backward, repeats))
    if bf16:
        try:
            row["forward_backward_bf16"] = best_seconds(forward_backward_bf16, repeats)
        except (RuntimeError, TypeError) as error:  # an op without a bf16 path: reported, not fatal
            row["forward_backward_bf16"], row["bf16_error"], bf16 = float("nan"), f"{type(error).__name__}: {error}", False
            row["bf16_diff"] = row["output_scale"] = float("nan")
    if memory:
        row["peak_mb"] = peak_extra_mb(forward_backward)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    if bf16:
        model.eval()
        with torch.no_grad():
            full = model(graph)[target]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(graph)[target]
        row["bf16_diff"] = float((low.float() - full).abs().max())
        row["output_scale"] = float(full.abs().max())
    return row


def _epoch_seconds(model, frames: List, batch_size: int, epochs: int) -> float:
    """Fastest of ``epochs`` training epochs over ``frames`` after one warm-up epoch (seconds);
    the model's weights are restored afterwards."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    graphs = [AtomicGraph.from_ase(a, model.graph_spec) for a in frames]
    targets = torch.randn(len(graphs), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    order = torch.Generator().manual_seed(2)
    model.train()

    def epoch():
        for chunk in torch.randperm(len(graphs), generator=order).split(batch_size):
            batch = AtomicGraph.collate([graphs[i] for i in chunk.tolist()])
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(model(batch)[model.target], targets[chunk])
            loss.backward()
            optimizer.step()

    seconds = best_seconds(epoch, epochs)
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    return seconds


def format_comformer_table(result: Dict[str, object]) -> str:
    lines = [f"ComFormer, {result['crystals']} random crystals ({result['atoms']} atoms) per batch, float32, "
             f"{result['threads']} threads, random weights; times in s, train mode (BatchNorm batch statistics)"]
    recorded_used = False
    for name, row in result["models"].items():
        reference = row.get("reference")
        recorded = RECORDED_REFERENCE_SECONDS[name] if result["crystals"] == 64 else {}
        lines.append("")
        lines.append(f"{name}: {row['parameters']:,} parameters (paper {PAPER_PARAMETERS[name] / 1e6:.1f}M, "
                     f"AIRS code {REFERENCE_PARAMETERS[name]:,}), {row['edges']:,} k-NN edges "
                     f"(+ {3 * result['atoms']:,} lattice self-loops)")
        lines.append(f"{'pass':<26}{'sciml':>9}{'sciml both':>12}{'reference':>11}{'ratio':>8}")
        for key in ("graph", "forward", "forward_backward", "forward_backward_bf16"):
            both = row.get("both", {}).get(key)
            ours = row[key] if both is None else both
            theirs, ratio = "", ""
            base = key.removesuffix("_bf16")  # the reference has no bf16 runs: compared with its float32
            if reference is not None and base in reference:
                theirs, ratio = f"{reference[base]:.3f}", f"{ours / reference[base]:.2f}"
            elif base in recorded:
                theirs, ratio = f"{recorded[base]:.2f}*", f"{ours / recorded[base]:.2f}*"
                recorded_used = True
            lines.append(f"{key:<26}{row[key]:>9.3f}{'' if both is None else f'{both:.3f}':>12}{theirs:>11}{ratio:>8}")
        if "bf16_error" in row:
            lines.append(f"bf16 autocast failed: {row['bf16_error']}")
        else:
            lines.append(f"bf16 autocast: max |output diff| vs float32 {row['bf16_diff']:.1e} (outputs up to "
                         f"{row['output_scale']:.1e}); the reference runs float32")
        lines.append(f"peak memory of forward+backward: {row['peak_mb']:.0f} MB")
        lines.append(f"training epoch ({result['train_crystals']} crystals, batches of {result['batch_size']}, AdamW, "
                     f"MSE): {row['epoch']:.2f} s")
        if reference is not None:
            lines.append(f"reference in the same run ({reference['parameters']:,} parameters, same weights, same "
                         f"{row['reference_edges']:,}-edge graph, eval mode): max |output diff| "
                         f"{reference['max_diff']:.1e} (outputs up to {reference['scale']:.1e})")
    if recorded_used:
        lines.append("* the reference's times recorded on this machine type on its own 64-crystal batch (not this "
                     "run; its graph construction is jarvis-tools based); pass --reference-python and "
                     "--reference-source to time the reference here")
    lines.append("sciml: the default graph (lattice_self_loops='frame'); sciml both: 'both', the reference's graph; "
                 "ratio: sciml both (else sciml) / reference; goal <= 0.5")
    return "\n".join(lines)

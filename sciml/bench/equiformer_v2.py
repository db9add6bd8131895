"""Speed and memory of sciml's EquiformerV2 against fairchem's implementation.

The batch is OC20-like and fixed: Ag(111) 3x3x3 with an O adsorbate at the fcc site, 10 Å of
vacuum, rattled by 0.05 Å (seed 0): 28 atoms, 560 edges at the paper's 12 Å / 20 neighbours
(the first structure of the fairchem fixture). ``structures`` > 1 repeats it with other rattles.
Configurations with a stress head (the OMat24 family, e.g. ``omat24_31M``) run the OMat-style
case instead: a strained, rattled MgO rock-salt bulk cell of 32 atoms (OMat24 averages 31 atoms),
with the direct stress head in every pass. All runs are float32 with random weights (seed 0) of
a named configuration.

"forward" records autograd as fairchem's forward always does; "inference" is sciml's forward
under ``torch.no_grad()``; "forward+backward" adds the backward pass of
``energy.sum() + forces.pow(2).sum()`` (+ ``stress.pow(2).sum()`` with a stress head) to the
parameters; the ``_bf16`` rows run the same under
``torch.autocast("cpu", torch.bfloat16)`` (GEMMs in bf16; geometry, rotations and norms stay in
float32) and are compared with fairchem's float32 times, with their force difference to sciml's
float32 printed. Peak memory is the resident-memory growth of one forward+backward in a forked
single-threaded child.

fairchem runs in the same run when a Python with fairchem-core 1.x is given
(``--fairchem-python``): sciml's weights are exported as a fairchem checkpoint and
:mod:`sciml.bench.fairchem_runner` times fairchem's model on the same structures in that
interpreter, so the outputs are compared as well. Without it, fairchem's times recorded on this
machine type are quoted.

``train_step`` mode (:func:`bench_equiformer_v2_training_step`): eager against compiled training
steps with conservative forces and stress (see :mod:`sciml.bench.train_step`) of a small
EquiformerV2 (:data:`SMALL`) or a named configuration, in training mode (dropout, drop path).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import ase.io
import torch
import numpy as np
from ase.build import add_adsorbate, bulk, fcc111

from sciml.bench.timing import best_seconds, peak_extra_mb, torch_threads
from sciml.bench.train_step import compare_training_steps
from sciml.graph import AtomicGraph
from sciml.models import build_model
from sciml.fairchem import export_fairchem_checkpoint
from sciml.models.equiformer_v2 import PRESETS

# fairchem-core 1.10 (torch 2.4.1) through sciml/bench/fairchem_runner.py on this project's 2-core
# machine, idle (load < 0.6), 31M config, the structure above, float32, 2 threads, best of 3, two
# runs: seconds. (The project's reference notes quote 1.2-1.6 / 2.8-3.8 s, taken on a shared machine.)
RECORDED_FAIRCHEM_SECONDS = {"oc20_31M": {"forward": (0.68, 0.71), "forward_backward": (2.05, 2.20)}}
# "small" of the training-step benchmark: 2 blocks, lmax 2, 32 channels, conservative forces and
# stress (the double backward that compile must handle); about 0.2 M parameters.
SMALL = dict(num_layers=2, sphere_channels=32, attn_hidden_channels=32, num_heads=4, attn_alpha_channels=16,
             attn_value_channels=8, ffn_hidden_channels=64, lmax=2, mmax=1, grid_resolution=None, edge_channels=32,
             num_distance_basis=64, cutoff=6.0, max_neighbors=20, direct_forces=False)


def oc20_like_structures(count: int = 1):
    """``count`` rattled Ag(111)+O slabs (28 atoms each, OC20 tags)."""
    structures = []
    for seed in range(count):
        atoms = fcc111("Ag", size=(3, 3, 3), vacuum=10.0)
        add_adsorbate(atoms, "O", 1.2, "fcc")
        atoms.info.pop("adsorbate_info", None)  # not writable to extxyz
        atoms.set_tags([0 if t > 1 else 1 for t in atoms.get_tags()[:-1]] + [2])
        atoms.rattle(0.05, seed=seed)
        atoms.pbc = True
        structures.append(atoms)
    return structures


def omat_like_structures(count: int = 1):
    """``count`` MgO rock-salt cells of 32 atoms (2x2x1 conventional), sheared by 1-3 % and
    rattled by 0.05 Å: the OMat-style bulk case."""
    structures = []
    for seed in range(count):
        atoms = bulk("MgO", "rocksalt", a=4.21, cubic=True).repeat((2, 2, 1))
        strain = np.array([[1.0, 0.02, 0.0], [0.0, 0.99, 0.03], [0.01, 0.0, 1.01]])
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(0.05, seed=seed)
        structures.append(atoms)
    return structures


def bench_equiformer_v2(config: str = "oc20_31M", structures: int = 1, repeats: int = 3, threads: int = 2,
                        fairchem_python: Optional[str] = None) -> Dict[str, object]:
    """Times (s), peak memory (MB) and, with fairchem, its times and output differences."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # the family's own neighbour cap, or fairchem's strict one where the preset has sciml's "ties"
    # (fairchem cannot build that graph), so that fairchem runs the same model and graphs
    preset = PRESETS.get(config)
    rule = preset.max_neighbors_rule if preset is not None and preset.max_neighbors_rule != "ties" else "strict"
    model = build_model("equiformer_v2", preset=config, max_neighbors_rule=rule).eval()
    stress = model.stress_head is not None
    frames = omat_like_structures(structures) if stress else oc20_like_structures(structures)
    graphs = [AtomicGraph.from_ase(a, model.graph_spec) for a in frames]
    graph = AtomicGraph.collate(graphs)

    def forward():
        return model(graph, compute_stress=stress)

    def inference():
        with torch.no_grad():
            return model(graph, compute_stress=stress)

    def forward_backward():
        out = model(graph, compute_stress=stress)
        loss = out["energy"].sum() + out["forces"].pow(2).sum()
        (loss + out["stress"].pow(2).sum() if stress else loss).backward()

    def in_bf16(fn):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn()
        return run

    def checkpointed():
        model.train()  # activation checkpointing applies in training; dropouts are off in eval
        model.activation_checkpoint = True
        try:
            forward_backward()
        finally:
            model.activation_checkpoint = False
            model.eval()

    result: Dict[str, object] = dict(
        config=config, case="OMat-style bulk, direct stress" if stress else "OC20-like slab", atoms=graph.num_nodes,
        edges=graph.num_edges, structures=structures, threads=threads,
        parameters=sum(p.numel() for p in model.parameters()),
        sciml=dict(
            forward=best_seconds(forward, repeats), inference=best_seconds(inference, repeats),
            forward_backward=best_seconds(forward_backward, repeats),
            forward_bf16=best_seconds(in_bf16(forward), repeats),
            forward_backward_bf16=best_seconds(in_bf16(forward_backward), repeats),
            peak_mb=peak_extra_mb(forward_backward), peak_mb_checkpointed=peak_extra_mb(checkpointed),
        ),
    )  # fmt: skip
    with torch.no_grad():
        full, low = inference(), in_bf16(inference)()
    result["bf16_forces_diff"] = float((low["forces"].float() - full["forces"]).abs().max())
    result["forces_scale"] = float(full["forces"].abs().max())
    if fairchem_python:
        result["fairchem"] = _run_fairchem(fairchem_python, model, frames, graphs, repeats, threads)
    return result


def bench_equiformer_v2_training_step(config: str = "small", structures: int = 1, repeats: int = 10,
                                      threads: int = 2) -> Dict[str, object]:
    """Eager against compiled training steps with forces and stress of EquiformerV2 ``config``
    (``"small"``: :data:`SMALL`; else a named configuration with conservative forces) on
    ``structures`` OC20-like slabs: the result of
    :func:`~sciml.bench.train_step.compare_training_steps` plus ``case``."""
    with torch_threads(threads):
        torch.manual_seed(0)
        options = SMALL if config == "small" else dict(preset=config, direct_forces=False)
        model = build_model("equiformer_v2", **options)
        graphs = [AtomicGraph.from_ase(a, model.graph_spec) for a in oc20_like_structures(structures)]
        batch = AtomicGraph.collate(graphs)
        case = f"equiformer_v2 {config}, {batch.num_nodes} atoms, {batch.num_edges} edges"
        return {"case": case, **compare_training_steps(model, batch, compute_stress=True, repeats=repeats)}


def _run_fairchem(python: str, model, frames, graphs: List[AtomicGraph], repeats: int,
                  threads: int) -> Dict[str, object]:
    """fairchem's times on the same weights and structures (one at a time, as its runner does),
    and the max |output difference| from sciml's outputs for each structure's graph."""
    stress = model.stress_head is not None
    with torch.no_grad():
        ours = [model(g, compute_stress=stress) for g in graphs]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = export_fairchem_checkpoint(model, Path(tmp) / "model.pt")
        structures, out = Path(tmp) / "structures.extxyz", Path(tmp) / "fairchem.json"
        ase.io.write(structures, frames)
        runner = Path(__file__).with_name("fairchem_runner.py")
        command = [python, str(runner), "--checkpoint", str(checkpoint), "--structures", str(structures),
                   "--threads", str(threads), "--repeats", str(repeats), "--out", str(out)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"fairchem runner failed ({python}): {' | '.join(tail)}")
        report = json.loads(out.read_text())
    rows = report["structures"]
    energy = max(abs(float(o["energy"][0]) - r["energy"]) for o, r in zip(ours, rows))
    forces = max(float((o["forces"] - torch.tensor(r["forces"])).abs().max()) for o, r in zip(ours, rows))
    result = dict(version=report.get("fairchem_version"), forward=sum(r["forward_s"] for r in rows),
                  forward_backward=sum(r["forward_backward_s"] for r in rows), energy_diff=energy, forces_diff=forces)
    if stress:
        result["stress_diff"] = max(float((o["stress"][0] - torch.tensor(r["stress"])).abs().max()) for o, r in zip(ours, rows))
    return result


def format_equiformer_v2_table(result: Dict[str, object]) -> str:
    ours = result["sciml"]
    lines = [
        f"EquiformerV2 {result['config']} ({result['parameters']:,} parameters), {result['case']}, "
        f"{result['structures']} structure(s), "
        f"{result['atoms']} atoms, {result['edges']} edges, float32, {result['threads']} threads",
        f"{'pass':<22}{'sciml s':>10}{'fairchem s':>14}{'sciml/fairchem':>16}",
    ]
    fairchem = result.get("fairchem")
    recorded = RECORDED_FAIRCHEM_SECONDS.get(result["config"]) if result["structures"] == 1 else None
    for name in ("forward", "forward_backward", "inference", "forward_bf16", "forward_backward_bf16"):
        base = name.removesuffix("_bf16")  # fairchem has no CPU autocast: bf16 rows compare with its float32
        theirs, ratio = "", ""
        if fairchem is not None and base in fairchem:
            theirs, ratio = f"{fairchem[base]:.3f}", f"{ours[name] / fairchem[base]:.2f}"
        elif recorded is not None and base in recorded:
            low, high = recorded[base]
            theirs, ratio = f"{low:.2f}-{high:.2f}*", f"{ours[name] / high:.2f}-{ours[name] / low:.2f}*"
        lines.append(f"{name:<22}{ours[name]:>10.3f}{theirs:>14}{ratio:>16}")
    lines.append(f"bf16 autocast (GEMMs in bf16; geometry, rotations, norms in float32): max |dF| vs float32 "
                 f"{result['bf16_forces_diff']:.1e} eV/Å (forces up to {result['forces_scale']:.1e}); fairchem runs float32")
    lines.append(f"peak memory of forward+backward: {ours['peak_mb']:.0f} MB "
                 f"({ours['peak_mb_checkpointed']:.0f} MB with activation checkpointing)")
    if fairchem is not None:
        stress = f", max |dsigma| {fairchem['stress_diff']:.1e} eV/Å^3" if "stress_diff" in fairchem else ""
        lines.append(f"fairchem {fairchem['version']} in the same run on the same weights: max |dE| "
                     f"{fairchem['energy_diff']:.1e} eV, max |dF| {fairchem['forces_diff']:.1e} eV/Å{stress}")
    elif recorded is not None:
        lines.append("* fairchem-core 1.10 times recorded on this machine type (not this run); "
                     "pass --fairchem-python to run fairchem here")
    lines.append("goal: sciml/fairchem <= 0.5")
    return "\n".join(lines)


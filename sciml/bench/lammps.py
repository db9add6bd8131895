"""MD steps/s of LAMMPS (``pair_style sciml``, the exported package) against ase's VelocityVerlet with
the Python calculator: the same model, system, timestep and thread count, runs taking turns."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch


def ethanol_liquid(molecules: int = 56, spacing: float = 5.5):
    """``molecules`` ethanol molecules (dataset frames) on a cubic grid of ``spacing`` Å, periodic:
    56 molecules are 504 atoms in a 22 Å box."""
    from ase import Atoms
    from ase.io import read

    side = int(np.ceil(molecules ** (1 / 3)))
    path = Path(__file__).resolve().parents[2] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"
    frames = read(path, index=f":{molecules}")
    box = Atoms(cell=np.eye(3) * side * spacing, pbc=True)
    for k, frame in enumerate(frames):
        slot = np.array([k % side, k // side % side, k // side // side])
        frame.positions += (slot + 0.5) * spacing - frame.positions.mean(0)
        box += frame
    box.wrap()
    return box


def copper_crystal(cells: int = 5):
    """fcc Cu, ``cells``^3 cubic cells (5: 500 atoms), slightly rattled."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(cells)
    atoms.rattle(0.05, seed=0)
    return atoms


SYSTEMS = {"ethanol": ethanol_liquid, "copper": copper_crystal}


def bench_lammps(checkpoint: Optional[str] = None, system: str = "ethanol", steps: int = 30, repeats: int = 3,
                 threads: int = 1, workdir: Optional[str] = None) -> Dict:
    """Steps/s of ``steps`` NVE steps (0.5 fs, 300 K start) in LAMMPS and in ase, ``repeats`` runs each.

    The model is ``checkpoint`` or an EGNN of the ethanol workflow's shape (hidden 64, 4 layers,
    5 Å) with random weights; it is exported once to a package that LAMMPS runs. LAMMPS is timed by
    its own loop time (start-up and plugin loading excluded), ase by the wall time of
    ``VelocityVerlet.run`` after one warm-up step. Returns the per-run times and the ratio of medians.
    """
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from sciml.calculator import SciMLCalculator
    from sciml.deploy.export import export_model
    from sciml.deploy.lammps import run_lammps_md
    from sciml.inference import load_model, model_dtype
    from sciml.models import build_model

    torch.set_num_threads(threads)
    if checkpoint:
        model = load_model(checkpoint)
    else:
        torch.manual_seed(0)
        model = build_model("egnn", hidden=64, layers=4, cutoff=5.0)
    atoms = SYSTEMS[system]()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        start = time.perf_counter()
        package = export_model(model, Path(scratch) / "model.pt2")
        export_seconds = time.perf_counter() - start
        lammps_times, ase_times = [], []
        for repeat in range(repeats):
            run = run_lammps_md(package, atoms, Path(scratch) / f"run{repeat}", steps=steps, thermo_every=steps,
                                threads=threads)
            lammps_times.append(run.loop_seconds)

            moving = atoms.copy()
            moving.calc = SciMLCalculator(model, device="cpu", dtype=model_dtype(model))
            dynamics = VelocityVerlet(moving, timestep=0.5 * units.fs)
            dynamics.run(1)
            start = time.perf_counter()
            dynamics.run(steps)
            ase_times.append(time.perf_counter() - start)
    return {"system": system, "atoms": len(atoms), "steps": steps, "threads": threads,
            "model": checkpoint or "EGNN hidden 64, 4 layers, 5 Å, random weights",
            "export_seconds": export_seconds, "lammps_seconds": lammps_times, "ase_seconds": ase_times}


def format_lammps_table(result: Dict) -> str:
    """Steps/s (median, min-max over runs) of LAMMPS and ase, and their ratio."""
    def rates(times: List[float]) -> List[float]:
        return sorted(result["steps"] / t for t in times)

    lines = [f"NVE steps/s, {result['system']} ({result['atoms']} atoms), {result['model']}, "
             f"{result['threads']} thread(s), {result['steps']} steps x {len(result['lammps_seconds'])} runs",
             f"{'':8} {'median':>9} {'min':>9} {'max':>9}"]
    medians = {}
    for name in ("lammps", "ase"):
        values = rates(result[f"{name}_seconds"])
        medians[name] = float(np.median(values))
        lines.append(f"{name:8} {medians[name]:>9.2f} {values[0]:>9.2f} {values[-1]:>9.2f}")
    ratio = medians["lammps"] / medians["ase"]
    lines.append(f"LAMMPS / ase: {ratio:.2f}x (export took {result['export_seconds']:.0f} s)")
    return "\n".join(lines)

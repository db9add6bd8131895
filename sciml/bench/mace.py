"""MACE (mace-torch) on e3nn vs MACE on sciml's kernels through ``sciml.ops.patch_e3nn``.

The same small MACE model is built twice from one seed: once plainly (e3nn's TensorProduct,
Linear, SphericalHarmonics, ...) and once constructed inside ``with patch_e3nn():`` (sciml's
classes in their place), then given the same weights with ``load_state_dict(strict=True)``.
Both run through MACE's own data pipeline (``mace.data.AtomicData.from_config`` and its
``torch_geometric`` batching, as ``mace.calculators.MACECalculator`` does) and through
``MACECalculator(models=...)`` for ASE molecular dynamics.

Units are MACE's and ASE's: positions in Å, energies in eV, forces in eV/Å, times in s.
Needs ``mace-torch`` (installed with ``--no-deps``; it also imports ``torch-ema`` and
``torchmetrics``).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from sciml.ops.irreps import default_dtype

HIDDEN_IRREPS = {"L1": "32x0e+32x1o", "L2": "32x0e+32x1o+32x2e"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def require_mace() -> None:
    """Raise ValueError with the install line if mace-torch (or what ``mace.modules`` imports) is missing."""
    try:
        import mace.modules  # noqa: F401
    except ImportError as err:
        raise ValueError(f"the MACE benchmark needs mace-torch ({err}); install it with "
                         f"pip install --no-deps mace-torch==0.3.16 && pip install torch-ema torchmetrics") from err


def build_mace(
    atomic_numbers: Sequence[int] = (1, 8),
    hidden_irreps: str = HIDDEN_IRREPS["L1"],
    max_ell: int = 3,
    correlation: int = 3,
    num_interactions: int = 2,
    r_max: float = 5.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.nn.Module:
    """A small ``mace.modules.ScaleShiftMACE`` with random weights drawn from ``seed``.

    MACE's default training configuration otherwise: residual interaction blocks, 8 Bessel
    functions, polynomial cutoff p=5, a 16x0e SiLU readout MLP, radial MLP [64, 64, 64], zero
    atomic reference energies, scale 1 and shift 0, 20 average neighbours. Whatever e3nn classes
    are installed when this runs are the ones the model is made of (see ``patch_e3nn``).
    """
    from e3nn import o3
    from mace import modules

    residual = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    torch.manual_seed(seed)
    with default_dtype(dtype):
        model = modules.ScaleShiftMACE(
            r_max=r_max,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=max_ell,
            interaction_cls=residual,
            interaction_cls_first=residual,
            num_interactions=num_interactions,
            num_elements=len(atomic_numbers),
            hidden_irreps=o3.Irreps(hidden_irreps),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.zeros(len(atomic_numbers)),
            avg_num_neighbors=20.0,
            atomic_numbers=list(atomic_numbers),
            correlation=correlation,
            gate=torch.nn.functional.silu,
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    return model.to(dtype)


def build_pair(
    patch: Optional[Callable[[], ContextManager]] = None, **config
) -> Tuple[torch.nn.Module, torch.nn.Module]:
    """(plain, patched): the same ``build_mace(**config)`` model built on e3nn and built inside
    ``patch()`` (default ``sciml.ops.patch_e3nn``), the patched one given the plain one's weights
    with ``load_state_dict(strict=True)``."""
    if patch is None:
        from sciml.ops import patch_e3nn as patch
    plain = build_mace(**config)
    with patch():
        patched = build_mace(**config)
    patched.load_state_dict(plain.state_dict(), strict=True)
    return plain, patched


def water_box(molecules: int = 64, spacing: float = 3.1, seed: int = 0):
    """A periodic cubic box of ``molecules`` randomly rotated waters on a simple-cubic grid of
    ``spacing`` Å (3.1 Å gives roughly liquid density). ``molecules`` is rounded up to a cube."""
    from ase import Atoms
    from ase.build import molecule

    side = int(np.ceil(molecules ** (1 / 3) - 1e-9))
    rng = np.random.default_rng(seed)
    box = Atoms(cell=np.eye(3) * side * spacing, pbc=True)
    for index in np.ndindex(side, side, side):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
        water.translate((np.array(index) + 0.5) * spacing - water.get_center_of_mass())
        box += water
    return box


def copper_box(cells: int = 3):
    """Periodic fcc Cu, ``cells``^3 cubic cells of 4 atoms (a = 3.6 Å), slightly rattled."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(cells)
    atoms.rattle(0.05, seed=0)
    return atoms


def make_structure(name: str, size: int):
    """``("water", molecules)`` or ``("copper", cubic cells per side)`` as ase Atoms."""
    if name == "water":
        return water_box(size)
    if name == "copper":
        return copper_box(size)
    raise ValueError(f"unknown structure {name!r}; use 'water' or 'copper'")


def atoms_to_batch(atoms, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """MACE's input dictionary for one structure, made as MACECalculator makes it.

    Keys include positions [n_atoms, 3] (Å), node_attrs [n_atoms, n_elements] (one-hot),
    edge_index [2, n_edges], shifts [n_edges, 3] (Å), cell [3, 3], batch [n_atoms], ptr [2].
    Floating tensors are in the model's dtype.
    """
    from mace import data as mace_data
    from mace.tools import torch_geometric, utils

    dtype = next(model.parameters()).dtype
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    with default_dtype(dtype):
        config = mace_data.config_from_atoms(atoms, key_specification=mace_data.KeySpecification())
        graph = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=float(model.r_max),
                                                 heads=list(getattr(model, "heads", ["Default"])))
    batch = torch_geometric.Batch.from_data_list([graph]).to_dict()
    return {key: value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value
            for key, value in batch.items()}


def energy_forces(model: torch.nn.Module, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Energy [1] (eV) and forces [n_atoms, 3] (eV/Å, minus the autograd gradient), detached."""
    out = model(dict(batch), training=False, compute_force=True)
    return out["energy"].detach(), out["forces"].detach()


def training_step(model: torch.nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward+backward as in training: energy and forces (autograd, graph kept), then a loss
    (mean energy^2 + mean force^2) backpropagated into the parameters' ``.grad``. Returns the loss."""
    model.zero_grad(set_to_none=True)
    out = model(dict(batch), training=True, compute_force=True)
    loss = out["energy"].square().mean() + out["forces"].square().mean()
    loss.backward()
    return loss.detach()


def mace_calculator(model: torch.nn.Module):
    """``mace.calculators.MACECalculator`` around ``model`` (in its own dtype; it turns off the
    parameters' gradients)."""
    from mace.calculators import MACECalculator

    dtype = "float64" if next(model.parameters()).dtype == torch.float64 else "float32"
    return MACECalculator(models=model, device="cpu", default_dtype=dtype)


def alternating_samples(functions: Sequence[Callable[[], object]], repeats: int, warmup: int = 1) -> List[List[float]]:
    """Wall times (s) of ``repeats`` runs of each function, taking turns (after ``warmup`` untimed
    runs each) so that a change of machine load hits all of them alike. Shape [functions][repeats]."""
    for fn in functions:
        for _ in range(warmup):
            fn()
    samples: List[List[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for fn, times in zip(functions, samples):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return samples


def _md_runner(model: torch.nn.Module, atoms, steps: int, timestep_fs: float) -> Callable[[], None]:
    """A function running ``steps`` velocity-Verlet steps of ``atoms`` (its own copy, 300 K start)
    on ``model`` through MACECalculator."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = mace_calculator(model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    return lambda: dyn.run(steps)


def compare_variant(
    variant: str,
    atoms,
    dtype: torch.dtype,
    repeats: int,
    md_steps: int,
    patch: Optional[Callable[[], ContextManager]] = None,
) -> Dict:
    """Agreement and timings of plain vs patched MACE for one hidden-irreps variant on ``atoms``.

    Returns energy/force differences (eV, eV/Å), forward+backward times (s) and MD times per
    ``md_steps`` steps (s) of both models as lists taken in turns, and the model's sizes.
    """
    numbers = sorted(set(int(z) for z in atoms.numbers))
    plain, patched = build_pair(patch, atomic_numbers=numbers, hidden_irreps=HIDDEN_IRREPS[variant], dtype=dtype)
    batch = atoms_to_batch(atoms, plain)
    e_plain, f_plain = energy_forces(plain, batch)
    e_patched, f_patched = energy_forces(patched, batch)
    step_times = alternating_samples([lambda: training_step(plain, batch), lambda: training_step(patched, batch)],
                                     repeats)
    row = {
        "variant": variant, "hidden_irreps": HIDDEN_IRREPS[variant], "atoms": len(atoms),
        "edges": int(batch["edge_index"].shape[1]), "dtype": str(dtype).replace("torch.", ""),
        "parameters": sum(p.numel() for p in plain.parameters()),
        "energy": float(e_plain.sum()), "energy_diff": float((e_plain - e_patched).abs().max()),
        "force_diff": float((f_plain - f_patched).abs().max()), "force_scale": float(f_plain.abs().max()),
        "step_plain": step_times[0], "step_patched": step_times[1], "md_steps": md_steps,
    }
    if md_steps > 0:
        runners = [_md_runner(model, atoms, md_steps, 0.5) for model in (plain, patched)]
        row["md_plain"], row["md_patched"] = alternating_samples(runners, repeats)
    return row


def run(
    structure: str = "water",
    size: int = 27,
    variants: Sequence[str] = ("L1", "L2"),
    dtype: str = "float64",
    repeats: int = 5,
    md_steps: int = 10,
    threads: int = 1,
    patch: Optional[Callable[[], ContextManager]] = None,
) -> List[Dict]:
    """Plain (e3nn) vs patched (``patch_e3nn``) MACE, both in this run, for each variant.

    ``structure``/``size``: "water" with ``size`` molecules (rounded up to a cube) or "copper" with
    ``size``^3 cubic fcc cells. Times: a training forward+backward (energy, forces by autograd,
    loss into parameter gradients) and ``md_steps`` ASE velocity-Verlet steps (0.5 fs) through
    MACECalculator, each repeated ``repeats`` times in turns. ``patch`` defaults to
    ``sciml.ops.patch_e3nn``.
    """
    from sciml.bench.timing import torch_threads

    require_mace()
    atoms = make_structure(structure, size)
    with torch_threads(threads):
        return [compare_variant(v, atoms, DTYPES[dtype], repeats, md_steps, patch) for v in variants]


def format_mace_table(rows: List[Dict]) -> str:
    """Human-readable table: agreement, then median [min-max] times and e3nn/sciml ratios
    (ratio > 1: the patched model is faster)."""
    lines = []
    for r in rows:
        lines.append(f"MACE {r['variant']} ({r['hidden_irreps']}, max_ell 3, correlation 3, 2 interactions, "
                     f"{r['parameters']} parameters), {r['atoms']} atoms, {r['edges']} edges, {r['dtype']}")
        lines.append(f"  agreement: |dE| {r['energy_diff']:.2e} eV (E = {r['energy']:.6f} eV), "
                     f"max |dF| {r['force_diff']:.2e} eV/Å (max |F| {r['force_scale']:.3f} eV/Å)")
        lines.append(_timing_line("forward+backward (ms)", r["step_plain"], r["step_patched"], 1e3, False))
        if "md_plain" in r:
            rate = r["md_steps"]
            lines.append(_timing_line(f"MD steps/s ({rate} steps)", r["md_plain"], r["md_patched"], rate, True))
    return "\n".join(lines)


def _timing_line(label: str, plain: Sequence[float], patched: Sequence[float], scale: float, inverse: bool) -> str:
    """One row: e3nn and sciml as median [min-max] of ``scale * t`` (or ``scale / t`` if ``inverse``),
    and the ratio of median times e3nn/sciml with its range over the repeats' pairs."""
    def show(times: Sequence[float]) -> str:
        values = sorted(scale / t if inverse else scale * t for t in times)
        return f"{statistics.median(values):9.2f} [{values[0]:.2f}-{values[-1]:.2f}]"

    ratios = sorted(a / b for a, b in zip(plain, patched))
    ratio = statistics.median(plain) / statistics.median(patched)
    return (f"  {label:<24} e3nn {show(plain)}   sciml {show(patched)}   "
            f"e3nn/sciml {ratio:.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}], {len(plain)} repeats")

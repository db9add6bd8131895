"""The conformance suite: checks every registered model passes, from what it declares
(:mod:`sciml.models.contract`) alone.

Each check takes a model name (a key of :data:`sciml.models.MODELS`) and raises AssertionError
naming the model and the property that failed. Models are checked at their registered ``small``
options (the defaults when none are given), in float64 and eval mode; graph models on ethanol,
rattled rock-salt NaCl and a Cu slab (H, C, O, Na, Cl, Cu):

- :func:`check_presets`: every preset (and the defaults) builds, reports its registry name, and
  its options rebuild an identical model;
- :func:`check_checkpoint_round_trip`: a saved checkpoint loads (``weights_only``) to the same outputs;
- :func:`check_symmetry`: the declared symmetry, with the shared equivariance checker for graph
  models (rotations, translations, permutations, periodic images; reflections for "E(3)") and
  90-degree rotations / reflections of the (x, y) plane for "p4" / "p4m" grid models;
- :func:`check_batch_independence`: a structure's outputs do not depend on the rest of its batch;
- :func:`check_float32`: float32 outputs agree with float64 ones;
- :func:`check_derivatives`: conservative forces and stress equal finite differences of the energy;
- :func:`check_bad_input`: an unknown element (graph models) or a wrong shape (grid models)
  raises ValueError, not an error from inside torch.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule

from sciml.graph import AtomicGraph, GraphSpec
from sciml.inference import load_model
from sciml.io.checkpoint import save_checkpoint
from sciml.models import build_model, model_entry
from sciml.testing.consistency import check_conservative
from sciml.testing.equivariance import ALL_CHECKS, check_equivariance

CHECKS = ("presets", "checkpoint_round_trip", "symmetry", "batch_independence", "float32", "derivatives",
          "bad_input")


def small_model(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    """Model ``name`` at its registered small options, seeded, in ``dtype`` and eval mode."""
    entry = model_entry(name)
    torch.manual_seed(seed)
    options = (entry.small or entry.resolve()).to_dict()
    return build_model(name, **options).to(dtype).eval()


def structures(model: torch.nn.Module) -> List[Atoms]:
    """Test structures for a graph model: a rattled crystal and, unless the model reads lattice
    frames (3D crystals only), a molecule and a slab; with the model's per-atom inputs as arrays."""
    crystal = bulk("NaCl", "rocksalt", a=4.4, cubic=True)
    crystal.rattle(0.1, seed=1)
    found = [crystal]
    if not model.graph_spec.lattice_frame:
        slab = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
        slab.pbc = (True, True, False)
        slab.center(vacuum=4.0, axis=2)
        slab.rattle(0.1, seed=2)
        found = [molecule("CH3CH2OH"), *found, slab]
    rng = np.random.default_rng(3)
    for atoms in found:
        for key, kind in model.atom_inputs.items():
            atoms.arrays[key] = rng.normal(size=(len(atoms), 3) if kind == "atom_vector" else len(atoms))
    return found


def graph_of(model: torch.nn.Module, atoms, dtype: torch.dtype = torch.float64) -> AtomicGraph:
    """``atoms`` (one or a list) as the model's graph, with its per-atom inputs."""
    return AtomicGraph.from_ase(atoms, GraphSpec.of(model), dtype=dtype, property_keys=list(model.atom_inputs))


def grid_input(model: torch.nn.Module, batch: int = 2, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random channels-last input for a grid model: (B, n, n, t_in), or (B, n, n, t, C) in space-time."""
    n = 2 * max(model.modes[:2]) + 2
    generator = torch.Generator().manual_seed(4)
    if model.space_time:
        shape = (batch, n, n, 2 * model.modes[2] + 2, model.in_channels)
    else:
        shape = (batch, n, n, model.in_channels)
    return torch.randn(shape, generator=generator).to(dtype)


def outputs(model: torch.nn.Module, value) -> Dict[str, torch.Tensor]:
    """The model's declared outputs on a graph or grid input (forces and stress when it has them)."""
    if model.inputs == "grid":
        return {"field": model(value)}
    kwargs = {}
    if model.forces is not None:
        kwargs = {"compute_forces": True, "compute_stress": "stress" in model.outputs and bool(value.pbc.any())}
    result = model(value, **kwargs)
    return {k: v.detach() for k, v in result.items() if k in model.outputs}


def _inputs(model):
    return [grid_input(model)] if model.inputs == "grid" else [graph_of(model, atoms) for atoms in structures(model)]


def _assert_close(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], what: str, **tolerance) -> None:
    assert set(got) == set(want), f"{what}: outputs {sorted(got)} != {sorted(want)}"
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=lambda m, key=key: f"{what}, output {key}: {m}", **tolerance)


def check_presets(name: str) -> None:
    """Every preset and the defaults build (each distinct configuration once) with the registry
    name and their options; the small model's options rebuild it with the same parameters."""
    entry = model_entry(name)
    built: List = []
    for label, options in {"defaults": entry.resolve(), **entry.presets}.items():
        if options in built:
            continue
        built.append(options)
        model = build_model(name, preset=None if label == "defaults" else label)
        assert model.model_name == name, f"{name} ({label}) reports model_name {model.model_name!r}"
        assert model.options == options and isinstance(model.options, entry.options), \
            f"{name} ({label}): options {model.options} != {options}"
        del model
    model = small_model(name)
    rebuilt = build_model(model.model_name, **model.options.to_dict())
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes, f"{name} rebuilds differently"


def check_checkpoint_round_trip(name: str) -> None:
    """save_checkpoint -> load_model gives the same outputs (and the same options)."""
    model = small_model(name)
    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint(Path(folder) / "model.pt", model.state_dict(), model.model_name,
                               model.options.to_dict())
        loaded = load_model(path)
    assert loaded.options == model.options and loaded.model_name == name
    for value in _inputs(model):
        _assert_close(outputs(loaded, value), outputs(model, value), f"{name} after a checkpoint round trip",
                      rtol=0, atol=0)


def check_symmetry(name: str, tolerance: float = 1e-6) -> None:
    """The declared symmetry holds to ``tolerance`` (float64; EquiformerV2's S2 grid activations
    are equivariant to ~1e-8, exact models to rounding)."""
    model = small_model(name)
    if model.inputs == "grid":
        x = grid_input(model)
        transforms = {"p4": [("rotation by 90 degrees", lambda t: torch.rot90(t, 1, (1, 2)))],
                      "trivial": []}
        transforms["p4m"] = transforms["p4"] + [("reflection", lambda t: torch.flip(t, (1,)))]
        reference = model(x)
        for label, transform in transforms[model.symmetry]:
            error = float((model(transform(x)) - transform(reference)).abs().max())
            assert error <= tolerance * max(1.0, float(reference.abs().max())), f"{name}: {label} error {error:.2e}"
        return
    checks = [c for c in ALL_CHECKS if c != "reflection" or model.symmetry == "E(3)"]
    kinds = {key: output.kind for key, output in model.outputs.items()}
    for atoms in structures(model):
        report = check_equivariance(model, atoms, outputs=kinds, checks=checks, inputs=model.atom_inputs,
                                    build_graph=lambda a: graph_of(model, a))
        assert report.max_error() <= tolerance, f"{name} is not {model.symmetry}-equivariant on " \
                                                f"{atoms.get_chemical_formula()}:\n{report}"


def check_batch_independence(name: str) -> None:
    """Outputs of a batch equal the outputs of each member alone."""
    model = small_model(name)
    if model.inputs == "grid":
        x = grid_input(model)
        together = model(x)
        for k in range(x.shape[0]):
            torch.testing.assert_close(model(x[k:k + 1])[0], together[k], rtol=1e-10, atol=1e-10)
        return
    found = structures(model)
    batch = graph_of(model, found)
    together = outputs(model, batch)
    for k, atoms in enumerate(found):
        alone = outputs(model, graph_of(model, atoms))
        lo, hi = int(batch.ptr[k]), int(batch.ptr[k + 1])
        for key, value in alone.items():
            part = together[key][lo:hi] if model.outputs[key].kind.startswith("atom_") else together[key][k:k + 1]
            torch.testing.assert_close(part, value, rtol=1e-10, atol=1e-10,
                                       msg=lambda m, key=key: f"{name}: {key} of structure {k} depends on its batch: {m}")


def check_float32(name: str) -> None:
    """float32 outputs agree with float64 ones to float32 precision."""
    model = small_model(name)
    single = copy.deepcopy(model).float()
    for value in _inputs(model):
        low = value.to(torch.float32) if model.inputs == "grid" else value.to(dtype=torch.float32)
        got = outputs(single, low)
        assert all(v.dtype == torch.float32 for v in got.values()), f"{name}: float32 model gave {got}"
        want = outputs(model, value)
        for key in want:
            scale = max(1.0, float(want[key].detach().abs().max()))
            error = float((got[key].detach().double() - want[key].detach()).abs().max())
            assert error <= 1e-3 * scale, f"{name}: float32 {key} differs from float64 by {error:.2e}"


def check_derivatives(name: str, tolerance: float = 1e-6) -> None:
    """Conservative models: forces and stress equal central finite differences of the energy."""
    model = small_model(name)
    if model.forces != "conservative":
        return
    for atoms in structures(model):
        errors = check_conservative(model, atoms, build_graph=lambda a: graph_of(model, a))
        assert max(errors.values()) <= tolerance, f"{name}: autograd vs finite differences {errors}"


def check_bad_input(name: str) -> None:
    """ValueError, not an error from inside torch, for: a graph missing a per-atom input (models
    with ``atom_inputs``) or else an atomic number beyond the periodic table (150); a grid input
    of the wrong rank or channel count."""
    model = small_model(name)
    if model.inputs == "grid":
        x = grid_input(model)
        for bad in (x[0], x[..., :1].repeat_interleave(model.in_channels + 1, -1)):
            try:
                model(bad)
            except ValueError:
                continue
            raise AssertionError(f"{name} accepted an input of shape {tuple(bad.shape)}")
        return
    graph = graph_of(model, structures(model)[0])
    if model.atom_inputs:
        missing = next(iter(model.atom_inputs))
        bad = dataclasses.replace(graph, atom_properties={k: v for k, v in graph.atom_properties.items() if k != missing})
        what = f"a graph without its input {missing!r}"
    else:
        bad = dataclasses.replace(graph, atomic_numbers=torch.full_like(graph.atomic_numbers, 150))
        what = "atomic number 150"
    try:
        model(bad)
    except ValueError:
        return
    raise AssertionError(f"{name} accepted {what} without a ValueError")

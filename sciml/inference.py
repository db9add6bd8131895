"""Inference: load a trained model and evaluate structures in batches (no trainer needed)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from sciml.devices import resolve_device, resolve_dtype
from sciml.graph import AtomicGraph, GraphSpec, apply_strain
from sciml.io.checkpoint import check_sciml_payload, is_sciml_payload, read_torch_file
from sciml.models import build_model
from sciml.models.domain import ModelDomain


# Per-atom outputs of energy models: energies (N,) eV, forces (N, 3) eV/Å.
PER_ATOM = ("energies", "forces")


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (the default dtype if it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.get_default_dtype())


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def takes_derivative_flags(model: torch.nn.Module) -> bool:
    """Whether ``model.forward`` takes ``compute_forces``/``compute_stress`` (energy models)."""
    return _accepts_derivative_flags(type(model).forward)


@functools.lru_cache(maxsize=None)
def _accepts_derivative_flags(forward: Callable) -> bool:
    parameters = inspect.signature(forward).parameters
    return "compute_forces" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def model_outputs(
    model: torch.nn.Module, batch: AtomicGraph, compute_forces: bool = False, compute_stress: bool = False
) -> Dict[str, torch.Tensor]:
    """``model(batch)``: a dict of predictions. ``compute_forces``/``compute_stress`` are passed
    to models whose ``forward`` takes them (energy models); any other model, e.g. one that
    predicts positions, is called with the batch alone."""
    if takes_derivative_flags(model):
        return model(batch, compute_forces=compute_forces, compute_stress=compute_stress)
    return model(batch)


def energy_gradients(
    model: torch.nn.Module, graph: AtomicGraph, strain: bool
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """The outputs of an energy model called without derivatives, its forces (N, 3) eV/Å = -dE/dx
    and, with ``strain``, its virial (B, 3, 3) eV = -dE/deps for a zero strain applied as
    :func:`~sciml.graph.apply_strain`, both taken by ``torch.func.grad``.

    Unlike the ``torch.autograd.grad`` inside the models' forward, this traces exactly: make_fx
    records the backward of an operation that saved its own output (sigmoid, tanh, softmax) with
    that output detached, so forces traced through autograd.grad are right but their gradients
    with respect to the parameters are off (1e-7 relative in float64, measured on EGNN). The
    model's energy must stay differentiable in ``graph.positions`` and ``graph.cell`` when called
    with ``compute_forces=False`` (as :func:`~sciml.graph.edge_geometry` keeps it).
    """
    def energy(positions: torch.Tensor, deformation: Optional[torch.Tensor]):
        cell = graph.cell
        if deformation is not None:
            positions, cell = apply_strain(positions, cell, graph.batch, deformation)
        out = model(replace(graph, positions=positions, cell=cell), compute_forces=False, compute_stress=False)
        return out["energy"].sum(), out

    arguments = (0, 1) if strain else (0,)
    zero = torch.zeros_like(graph.cell) if strain else None
    gradients, out = torch.func.grad(energy, argnums=arguments, has_aux=True)(graph.positions, zero)
    return dict(out), -gradients[0], -gradients[1] if strain else None


def predict_batches(
    model: torch.nn.Module,
    graphs: Sequence[AtomicGraph],
    batch_size: int = 32,
    device: "str | torch.device | None" = None,
    compute_forces: bool = True,
    compute_stress: Optional[bool] = None,
) -> Iterator[Tuple[AtomicGraph, Dict[str, torch.Tensor]]]:
    """Run ``model`` (in eval mode) over ``graphs`` in order, ``batch_size`` structures at a time.

    Yields each collated batch (on ``device``, default the model's) and the model's outputs with
    the autograd graph dropped: energy (B,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) eV/Å^3.
    ``compute_stress`` None asks for stress when the batch has a periodic structure (True asks
    for it only then too). Any model works: see :func:`model_outputs`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(graphs), batch_size):
            batch = AtomicGraph.collate(list(graphs[start:start + batch_size])).to(device)
            stress = compute_stress is not False and bool(batch.pbc.any())
            out = model_outputs(model, batch, compute_forces, stress)
            yield batch, {k: v.detach() for k, v in out.items()}
    finally:
        model.train(was_training)


def load_model(checkpoint_path: "str | Path", device: "str | torch.device" = "cpu",
               dtype: "str | torch.dtype | None" = None) -> torch.nn.Module:
    """The model saved in a checkpoint, on ``device``, in eval mode.

    A sciml checkpoint (``sciml train``) or a fairchem v1 EquiformerV2 checkpoint (converted by
    :func:`sciml.fairchem.load_fairchem_checkpoint`). ``dtype`` ("float32",
    "float64" or a torch dtype) converts the parameters; None keeps the dtype it was saved in.
    The model's ``domain`` (:class:`~sciml.models.domain.ModelDomain`, or None for a checkpoint
    without one) names the checkpoint in its refusals.
    """
    dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    payload = read_torch_file(checkpoint_path, map_location=device)
    if not is_sciml_payload(payload) and isinstance(payload, dict) and "state_dict" in payload:
        from sciml.models.equiformer_v2.fairchem import fairchem_checkpoint_model

        model, _ = fairchem_checkpoint_model(payload, checkpoint_path)
        return model.to(device=device, dtype=dtype or model_dtype(model))
    payload = check_sciml_payload(payload, checkpoint_path)
    model = build_model(payload["model_name"], **payload["options"])
    state = payload["state_dict"]
    saved = next((v.dtype for v in state.values() if v.is_floating_point()), torch.get_default_dtype())
    model.to(device=device, dtype=saved)
    model.load_state_dict(state)
    domain = payload.get("domain")
    model.domain = ModelDomain.from_dict(domain, str(checkpoint_path)) if isinstance(domain, dict) else None
    return model.to(dtype=dtype or saved).eval()


def predict(
    structures: List,
    model: torch.nn.Module,
    batch_size: int = 32,
    compute_stress: Optional[bool] = None,
    device: "str | torch.device | None" = None,
) -> List[dict]:
    """Evaluate many ``ase.Atoms`` in batches (the ASE calculator API is one structure at a time).

    Graphs are built as the model declares (:class:`~sciml.graph.GraphSpec`). Returns one dict per
    structure: for energy models ``energy`` (eV, float), ``energies`` ((n,) eV per atom),
    ``forces`` ((n, 3) eV/Å) and, for periodic
    structures unless ``compute_stress`` is False, ``stress`` ((3, 3) eV/Å^3); every other
    per-structure output of the model (e.g. a ComFormer property) under its name, a float for a
    scalar, else an array.
    """
    spec = GraphSpec.of(model)
    graphs = []
    for number, atoms in enumerate(structures):
        graph = AtomicGraph.from_ase(atoms, spec, dtype=model_dtype(model))
        graph.require_neighbors(f"structure {number} ({atoms.get_chemical_formula()})")
        graphs.append(graph)
    results: List[dict] = []
    for batch, out in predict_batches(model, graphs, batch_size, device, compute_stress=compute_stress):
        for row in per_structure_outputs(batch, out):
            results.append({key: float(value) if key not in PER_ATOM and key != "stress" and value.numel() == 1 else value.numpy()
                            for key, value in row.items()})
    return results


def per_structure_outputs(batch: AtomicGraph, out: Dict[str, torch.Tensor]) -> Iterator[Dict[str, torch.Tensor]]:
    """One batch's outputs split per structure, as CPU float64 tensors: ``energies`` (n,) eV per
    atom, ``forces`` (n, 3), ``stress`` (3, 3) of periodic structures only, and every
    per-structure output (``energy``, properties) under its name; other per-atom outputs are
    left out."""
    for k in range(batch.num_graphs):
        lo, hi = int(batch.ptr[k]), int(batch.ptr[k + 1])
        row = {}
        for key, value in out.items():
            if key in PER_ATOM:
                row[key] = value[lo:hi]
            elif key == "stress":
                if bool(batch.pbc[k].any()):
                    row[key] = value[k]
            elif value.ndim >= 1 and value.shape[0] == batch.num_graphs:
                row[key] = value[k]
        yield {key: value.detach().cpu().double() for key, value in row.items()}

"""ASE calculator for sciml graph models (energy, per-atom energies, forces and, for periodic
cells, stress)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace
from typing import Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from sciml.deploy.export import ExportedPotential, is_exported, load_potential
from sciml.devices import resolve_device, resolve_dtype
from sciml.graph import AtomicGraph, GraphSpec
from sciml.inference import model_dtype
from sciml.threads import adapt_threads


class SciMLCalculator(Calculator):
    """Energy (eV), per-atom energies (eV), forces (eV/Å) and stress (eV/Å^3, ase's sign and Voigt
    order) from a model.

    The graph is rebuilt whenever ase reports changed positions, cell, numbers or pbc (ase calls
    :meth:`calculate` only then); energy, per-atom energies (``atoms.get_potential_energies()``),
    forces and, for periodic structures, stress come from one forward and one backward pass.

    A model loaded from a checkpoint knows the elements it was trained on: a structure with
    others is refused (:class:`~sciml.models.domain.DomainError`) unless
    ``allow_unknown_elements``, and stress from a model that never saw stress labels or periodic
    cells comes with a warning.

    Args:
        model: a sciml graph model (``model(graph, compute_forces, compute_stress) -> dict``).
        cutoff: override the model's graph cutoff in Å (rarely needed; for k-NN crystal graphs
            the first search radius).
        device: ``auto`` (a GPU when CUDA works, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``float64`` or ``float32``; None is float64 (as MACE evaluates) for a model, and
            the compiled dtype for an exported package. A model in another dtype is converted
            on a copy (the caller's model is left as it is).
        allow_unknown_elements: predict structures with elements outside the model's domain,
            with a warning, instead of refusing them.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model: torch.nn.Module, cutoff: Optional[float] = None, device: str = "auto",
                 dtype: "str | torch.dtype | None" = None, allow_unknown_elements: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.device = resolve_device(device)
        if "energy" not in model.outputs:
            raise ValueError(f"{type(model).__name__} does not predict energies (it predicts {', '.join(model.outputs)}); "
                             f"a calculator needs an energy model")
        fixed = isinstance(model, ExportedPotential)
        wanted = resolve_dtype(dtype, default=model_dtype(model) if fixed else torch.float64)
        if wanted != model_dtype(model):
            if fixed:
                raise ValueError(f"the exported package runs in {model_dtype(model)} only; export it again with "
                                 f"--dtype {str(wanted).removeprefix('torch.')}")
            model = copy.deepcopy(model).to(dtype=wanted)
        self.model = model.to(self.device).eval()
        self.dtype = wanted
        spec = GraphSpec.of(model)
        self.graph_spec = spec if cutoff is None else replace(spec, cutoff=float(cutoff))
        self.cutoff, self.max_neighbors = self.graph_spec.cutoff, self.graph_spec.max_neighbors
        self.domain = model.domain
        self.allow_unknown_elements = allow_unknown_elements
        self._stress_warned = False

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto", dtype: "str | torch.dtype | None" = None,
                        **kwargs) -> "SciMLCalculator":
        """A calculator for the model saved at ``path`` (see ``sciml train``; fairchem
        EquiformerV2 checkpoints too), or for an exported package (``.pt2``, see ``sciml export``),
        which runs without building the Python model. Arguments as for the constructor."""
        device = resolve_device(device)
        model = load_potential(path, device=device, dtype=None if is_exported(path) else resolve_dtype(dtype, torch.float64))
        return cls(model, device=device, dtype=dtype, **kwargs)

    def check_structure(self, atoms) -> None:
        """Refuse ``atoms`` if it has elements outside the model's domain (see the class docstring).

        Raises:
            DomainError: the elements, the structure and the checkpoint are named.
        """
        if self.domain is not None:
            self.domain.check_elements(atoms.numbers, f"structure {atoms.get_chemical_formula()}",
                                       allow=self.allow_unknown_elements)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        adapt_threads()
        self.check_structure(self.atoms)
        periodic = bool(np.any(self.atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress is only defined for periodic structures")
        graph = AtomicGraph.from_ase(self.atoms, self.graph_spec, dtype=self.dtype)
        out = self.model(graph.to(self.device), compute_forces=True, compute_stress=periodic)
        energy = float(out["energy"].detach().sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().cpu().double().numpy(),
        }
        if "energies" in out:
            self.results["energies"] = out["energies"].detach().cpu().double().numpy()
        if "stress" in properties and "stress" not in out:
            raise PropertyNotImplementedError(
                f"{type(self.model).__name__} does not predict stress (direct-force models have no energy "
                f"derivative; EquiformerV2 needs direct_forces=False)")
        if periodic and "stress" in out:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].detach().cpu().double().numpy())
            if "stress" in properties:
                self._warn_stress()

    def _warn_stress(self) -> None:
        reason = self.domain.stress_warning() if self.domain is not None else None
        if reason is not None and not self._stress_warned:
            warnings.warn(reason, stacklevel=4)
            self._stress_warned = True


"""ASE calculator for sciml graph models (energy, forces and, for periodic cells, stress)."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from sciml.deploy.export import load_potential
from sciml.graph import AtomicGraph, GraphSpec
from sciml.inference import model_dtype


class SciMLCalculator(Calculator):
    """Energy (eV), forces (eV/Å) and stress (eV/Å^3, ase's sign and Voigt order) from a model.

    The graph is rebuilt whenever ase reports changed positions, cell, numbers or pbc (ase calls
    :meth:`calculate` only then); energy, forces and, for periodic structures, stress come from
    one forward and one backward pass.

    Args:
        model: a sciml graph model (``model(graph, compute_forces, compute_stress) -> dict``).
        cutoff: override the model's graph cutoff in Å (rarely needed; for k-NN crystal graphs
            the first search radius).
        device: where the model runs.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: torch.nn.Module, cutoff: Optional[float] = None, device: str = "cpu", **kwargs):
        super().__init__(**kwargs)
        self.device = torch.device(device)
        if getattr(model, "target", "energy") != "energy":
            raise ValueError(f"{type(model).__name__} does not predict energies (it was built for {model.target!r}); "
                             f"a calculator needs an energy model")
        self.model = model.to(self.device).eval()
        spec = GraphSpec.of(model)
        self.graph_spec = spec if cutoff is None else replace(spec, cutoff=float(cutoff))
        self.cutoff, self.max_neighbors = self.graph_spec.cutoff, self.graph_spec.max_neighbors
        self.dtype = model_dtype(model)

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", **kwargs) -> "SciMLCalculator":
        """A calculator for the model saved at ``path`` (see ``sciml train``), or for an exported
        package (``.pt2``, see ``sciml export``), which runs without building the Python model."""
        return cls(load_potential(path, device=device), device=device, **kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
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
        if "stress" in properties and "stress" not in out:
            raise PropertyNotImplementedError(
                f"{type(self.model).__name__} does not predict stress (direct-force models have no energy "
                f"derivative; EquiformerV2 needs direct_forces=False)")
        if periodic and "stress" in out:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].detach().cpu().double().numpy())

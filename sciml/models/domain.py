"""A trained model's domain: what it has seen, so that predictions outside it are refused.

A checkpoint written by ``sciml train`` stores the domain of its training set (``"domain"``, a
plain dict, see :meth:`ModelDomain.to_dict`); :func:`sciml.inference.load_model` attaches it to
the model as ``model.domain``. The calculator, ``sciml predict``, ``md``, ``relax``, ``eval`` and
``check`` refuse structures with elements the model never saw (:class:`DomainError`, a
ValueError naming the elements and the checkpoint) unless asked to allow them, and warn when
stress is asked of a model that never saw stress labels or periodic cells.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from ase.data import chemical_symbols

LABEL_UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3"}

# Units of the scalar targets of the crystal benchmarks (JARVIS-DFT dft_3d, Materials Project, MatBench).
PROPERTY_UNITS = {
    "formation_energy_peratom": "eV/atom", "e_form": "eV/atom", "formation_energy_per_atom": "eV/atom",
    "optb88vdw_bandgap": "eV", "mbj_bandgap": "eV", "hse_gap": "eV", "band_gap": "eV", "gap pbe": "eV",
    "gap expt": "eV", "ehull": "eV/atom", "energy_above_hull": "eV/atom", "e_above_hull": "eV/atom",
    "optb88vdw_total_energy": "eV/atom", "bulk_modulus_kv": "GPa", "shear_modulus_gv": "GPa",
    "log10(K_VRH)": "log10(GPa)", "log10(G_VRH)": "log10(GPa)", "exfoliation_en": "meV/atom",
    "last phdos peak": "1/cm", "n": "", "epsx": "", "epsy": "", "epsz": "", "dfpt_piezo_max_dielectric": "",
    "magmom_oszicar": "μB", "magmom_outcar": "μB", "density": "g/cm^3", "relaxed_energy": "eV",
}


class DomainError(ValueError):
    """A structure lies outside the domain a model was trained on (elements it never saw)."""


@dataclass(frozen=True)
class ModelDomain:
    """The training set a model has seen.

    Attributes:
        elements: atomic numbers present in the training structures, ascending.
        periodic: training structures with at least one periodic direction.
        molecules: training structures without periodic directions.
        labels: label name -> unit (``energy`` eV, ``forces`` eV/Å, ``stress`` eV/Å^3, named
            properties in their dataset's units, "" when unknown).
        ranges: label name -> (min, max) over the training set: ``energy_per_atom`` eV/atom,
            ``forces`` (largest component magnitude, so (0, max)) eV/Å, ``stress`` eV/Å^3,
            properties in their units.
        dataset: where the training data came from (a path or a dataset name), "" if unknown.
        counted: whether ``periodic`` and ``molecules`` count structures (False for a domain
            read from a foreign config: they only say which kinds were seen).
        source: the checkpoint the domain was read from (set on loading, not saved).
    """

    elements: Tuple[int, ...]
    periodic: int = 0
    molecules: int = 0
    labels: Dict[str, str] = field(default_factory=dict)
    ranges: Dict[str, Tuple[float, float]] = field(default_factory=dict)
    dataset: str = ""
    counted: bool = True
    source: str = field(default="", compare=False)

    # ------------------------------------------------------------------ building and saving
    @classmethod
    def from_graphs(cls, graphs: Sequence[Any], labels: Dict[str, str], dataset: str = "") -> "ModelDomain":
        """The domain of training graphs (:class:`~sciml.graph.AtomicGraph`) with ``labels``
        (name -> unit) trained on; label ranges are taken from the graphs' own labels."""
        elements = sorted({int(z) for g in graphs for z in g.atomic_numbers.unique().tolist()})
        periodic = sum(bool(g.pbc.any()) for g in graphs)
        ranges: Dict[str, Tuple[float, float]] = {}
        if "energy" in labels and graphs and graphs[0].energy is not None:
            per_atom = [float(g.energy.sum()) / max(int(g.num_nodes), 1) for g in graphs]
            ranges["energy_per_atom"] = (min(per_atom), max(per_atom))
        if "forces" in labels and graphs and graphs[0].forces is not None:
            ranges["forces"] = (0.0, max(float(g.forces.abs().max()) if g.forces.numel() else 0.0 for g in graphs))
        if "stress" in labels and graphs and graphs[0].stress is not None:
            values = [g.stress for g in graphs if g.stress is not None and bool(g.pbc.any())]
            if values:
                ranges["stress"] = (min(float(v.min()) for v in values), max(float(v.max()) for v in values))
        for name in labels:
            if name in LABEL_UNITS:
                continue
            values = [g.properties.get(name, g.atom_properties.get(name)) for g in graphs]
            values = [v for v in values if v is not None and v.numel()]
            if values:
                ranges[name] = (min(float(v.min()) for v in values), max(float(v.max()) for v in values))
        return cls(tuple(elements), periodic, len(graphs) - periodic, dict(labels), ranges, dataset)

    def to_dict(self) -> Dict[str, Any]:
        """Plain values only (checkpoints load with ``weights_only=True``); ``source`` is left out."""
        return {"elements": list(self.elements), "periodic": self.periodic, "molecules": self.molecules,
                "labels": dict(self.labels), "ranges": {k: [float(a), float(b)] for k, (a, b) in self.ranges.items()},
                "dataset": self.dataset, "counted": self.counted}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "") -> "ModelDomain":
        """Inverse of :meth:`to_dict`; ``source`` names the checkpoint in messages."""
        return cls(tuple(int(z) for z in data["elements"]), int(data.get("periodic", 0)),
                   int(data.get("molecules", 0)), dict(data.get("labels", {})),
                   {k: (float(v[0]), float(v[1])) for k, v in data.get("ranges", {}).items()},
                   str(data.get("dataset", "")), bool(data.get("counted", True)), source)

    # ------------------------------------------------------------------ checks
    def unknown_elements(self, numbers: Iterable[int]) -> List[int]:
        """The atomic numbers of ``numbers`` outside :attr:`elements`, ascending."""
        known = set(self.elements)
        return sorted({int(z) for z in np.unique(np.asarray(list(numbers), dtype=int))} - known)

    def check_elements(self, numbers: Iterable[int], structure: str = "the structure", allow: bool = False) -> None:
        """Refuse a structure with elements the model never saw.

        Raises:
            DomainError: names the structure, the unknown elements and the checkpoint; with
                ``allow`` a warning says the same and the prediction goes on.
        """
        unknown = self.unknown_elements(numbers)
        if not unknown:
            return
        names = ", ".join(_symbol(z) for z in unknown)
        where = f" of {self.source}" if self.source else ""
        message = (f"{structure} has element{'s' * (len(unknown) > 1)} {names} outside the domain{where} "
                   f"(trained on {self.element_names()})")
        if not allow:
            raise DomainError(f"{message}; pass --allow-unknown-elements (allow_unknown_elements=True) "
                              f"to predict anyway")
        warnings.warn(f"{message}: predicting anyway, the result is an extrapolation", stacklevel=3)

    def stress_warning(self) -> Optional[str]:
        """Why stress from this model should not be trusted, or None."""
        where = f" ({self.source})" if self.source else ""
        if not self.periodic:
            return f"the model{where} was never trained on periodic structures: its stress is an extrapolation"
        if "stress" not in self.labels:
            return f"the model{where} was never trained on stress labels: its stress is untested"
        return None

    # ------------------------------------------------------------------ reporting
    def element_names(self) -> str:
        return " ".join(_symbol(z) for z in self.elements)

    def describe(self) -> List[str]:
        """Lines for ``sciml info`` and ``sciml check``."""
        lines = [f"elements ({len(self.elements)}): {self.element_names()}",
                 f"structures: {self.periodic} periodic, {self.molecules} non-periodic" if self.counted else
                 "structures: " + " and ".join(kind for kind, seen in (("periodic", self.periodic), ("non-periodic", self.molecules)) if seen)]
        if self.labels:
            lines.append("labels: " + ", ".join(f"{name} ({unit})" if unit else name for name, unit in self.labels.items()))
        for name, (low, high) in self.ranges.items():
            if name == "forces":
                lines.append(f"largest force component: {high:.6g} eV/Å")
                continue
            unit = {"energy_per_atom": "eV/atom"}.get(name, self.labels.get(name, ""))
            lines.append(f"range of {name}: {low:.6g} to {high:.6g}{' ' + unit if unit else ''}")
        if self.dataset:
            lines.append(f"dataset: {self.dataset}")
        return lines


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"

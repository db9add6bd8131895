"""The OC20 evaluation metrics, as fairchem's ``Evaluator`` computes them.

S2EF (fairchem ``eval_on_free_atoms``, the default): per-atom metrics use only free atoms
(``fixed == False``). ``forces_mae`` is the mean absolute error over the Cartesian components of
the free atoms' forces; ``forces_cosine_similarity`` the mean over free atoms of the cosine
between predicted and true force vectors; ``forces_magnitude_error`` the mean over free atoms of
``| |F_pred| - |F_true| |``. ``energy_mae`` is the mean over structures. ``energy_within_threshold``
(EwT) is the fraction of structures with ``|dE| < 0.02 eV``; ``energy_forces_within_threshold``
(EFwT) the fraction with ``|dE| < 0.02 eV`` and every force component of every free atom within
``0.03 eV/Å`` (strict inequalities; a structure without free atoms passes on energy alone).
IS2RE uses ``energy_mae``, ``energy_mse`` and EwT on the relaxed energy.

Totals are accumulated batch by batch, so means over batches of unequal size are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

ENERGY_THRESHOLD = 0.02  # eV
FORCE_THRESHOLD = 0.03  # eV/Å


@dataclass
class OC20Metrics:
    """Accumulates OC20 metrics over batches: call :meth:`update` per batch, then :meth:`compute`.

    Attributes:
        energy_threshold: eV, for EwT and EFwT. force_threshold: eV/Å, for EFwT.
    """

    energy_threshold: float = ENERGY_THRESHOLD
    force_threshold: float = FORCE_THRESHOLD
    _totals: Dict[str, float] = field(default_factory=dict, repr=False)
    _counts: Dict[str, int] = field(default_factory=dict, repr=False)

    def update(
        self,
        energy_pred: torch.Tensor,
        energy_true: torch.Tensor,
        forces_pred: Optional[torch.Tensor] = None,
        forces_true: Optional[torch.Tensor] = None,
        natoms: Optional[torch.Tensor] = None,
        fixed: Optional[torch.Tensor] = None,
    ) -> None:
        """Add one batch of B structures with N atoms in total.

        Args:
            energy_pred, energy_true: (B,) eV.
            forces_pred, forces_true: (N, 3) eV/Å, or None for energy-only tasks (IS2RE).
            natoms: (B,) atom counts, atoms of structure b being consecutive; needed with forces.
            fixed: (N,) bool, True for fixed atoms, which the force metrics skip; None: all free.
        """
        energy_error = (energy_pred.detach().double().reshape(-1) - energy_true.detach().double().reshape(-1)).abs()
        structures = energy_error.numel()
        energy_ok = energy_error < self.energy_threshold
        self._add("energy_mae", energy_error.sum(), structures)
        self._add("energy_mse", energy_error.square().sum(), structures)
        self._add("energy_within_threshold", energy_ok.sum(), structures)
        if forces_pred is None or forces_true is None:
            return
        if natoms is None:
            raise ValueError("natoms is needed to evaluate forces")
        natoms = natoms.reshape(-1).to(torch.int64).cpu()
        if natoms.numel() != structures or int(natoms.sum()) != forces_true.shape[0]:
            raise ValueError(f"natoms ({natoms.numel()} structures, {int(natoms.sum())} atoms) does not match "
                             f"{structures} energies and {forces_true.shape[0]} force rows")
        pred, true = forces_pred.detach().double().cpu(), forces_true.detach().double().cpu()
        free = torch.ones(true.shape[0], dtype=torch.bool) if fixed is None else ~fixed.reshape(-1).bool().cpu()
        structure = torch.repeat_interleave(torch.arange(structures), natoms)[free]
        pred, true = pred[free], true[free]
        error = (pred - true).abs()
        self._add("forces_mae", error.sum(), error.numel())
        self._add("forces_cosine_similarity", torch.cosine_similarity(pred, true, dim=1).sum(), true.shape[0])
        self._add("forces_magnitude_error", (pred.norm(dim=1) - true.norm(dim=1)).abs().sum(), true.shape[0])
        worst = torch.zeros(structures, dtype=torch.float64).scatter_reduce(0, structure, error.amax(dim=1), "amax")
        both_ok = energy_ok.cpu() & (worst < self.force_threshold)
        self._add("energy_forces_within_threshold", both_ok.sum(), structures)

    def compute(self) -> Dict[str, float]:
        """The means so far, by metric name (units: eV, eV², eV/Å; thresholds as fractions)."""
        return {name: total / self._counts[name] for name, total in self._totals.items() if self._counts[name]}

    def _add(self, name: str, total: torch.Tensor, count: int) -> None:
        self._totals[name] = self._totals.get(name, 0.0) + float(total)
        self._counts[name] = self._counts.get(name, 0) + int(count)


def oc20_metrics(
    energy_pred: torch.Tensor,
    energy_true: torch.Tensor,
    forces_pred: Optional[torch.Tensor] = None,
    forces_true: Optional[torch.Tensor] = None,
    natoms: Optional[torch.Tensor] = None,
    fixed: Optional[torch.Tensor] = None,
) -> Dict[str, float]:
    """The metrics of one set of predictions (see :class:`OC20Metrics` for the arguments)."""
    metrics = OC20Metrics()
    metrics.update(energy_pred, energy_true, forces_pred, forces_true, natoms, fixed)
    return metrics.compute()

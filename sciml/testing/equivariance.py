"""One equivariance checker for every sciml model (and any model mapping AtomicGraph -> dict).

Each check transforms a structure, rebuilds its graph, runs the model and compares the outputs with
the transformed outputs of the original structure. Outputs are declared by kind:

==================  ===================================================  ===========================
kind                shape / meaning                                      under rotation R
==================  ===================================================  ===========================
``energy``          (B,) extensive invariant (scales with a supercell)   unchanged
``scalar``          (B, ...) intensive invariant                         unchanged
``vector``          (B, 3) per-structure vector                          v R^T
``tensor``          (B, 3, 3) per-structure rank-2 tensor (stress)       R T R^T
``atom_scalar``     (N, ...) per-atom invariant                          unchanged
``atom_vector``     (N, 3) per-atom vector (forces)                      v R^T
``atom_position``   (N, 3) per-atom position (moves with translations)   x R^T (+ t)
==================  ===================================================  ===========================

Checks: ``rotation``, ``reflection`` (for O(3) models), ``translation``, ``permutation`` and, for
periodic structures, ``supercell``, ``lattice_basis`` (a unimodular change of cell vectors) and
``wrap`` (atoms moved by lattice vectors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from sciml.graph import AtomicGraph, GraphSpec

KINDS = ("energy", "scalar", "vector", "tensor", "atom_scalar", "atom_vector", "atom_position")
ALL_CHECKS = ("rotation", "reflection", "translation", "permutation", "supercell", "lattice_basis", "wrap")
_PERIODIC_CHECKS = ("supercell", "lattice_basis", "wrap")
DEFAULT_OUTPUTS = {"energy": "energy", "forces": "atom_vector", "stress": "tensor"}


@dataclass
class EquivarianceReport:
    """Max absolute error per check and output: ``errors[check][output]``."""

    errors: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def max_error(self, check: Optional[str] = None) -> float:
        """Largest error of one check, or of all checks when ``check`` is None."""
        checks = [check] if check else list(self.errors)
        return max((e for c in checks for e in self.errors[c].values()), default=0.0)

    def __str__(self) -> str:
        lines = [f"{'check':<14} {'output':<12} max abs error"]
        for check, per_output in self.errors.items():
            for name, error in per_output.items():
                lines.append(f"{check:<14} {name:<12} {error:.3e}")
        return "\n".join(lines)


def random_rotation(rng: np.random.Generator, proper: bool = True) -> np.ndarray:
    """A uniformly random rotation (det +1), or a rotoreflection (det -1) when not ``proper``."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q if proper else -q


def _unimodular(rng: np.random.Generator, periodic: np.ndarray) -> np.ndarray:
    """A random integer matrix with det +1 that only mixes periodic cell vectors."""
    u = np.eye(3, dtype=int)
    idx = np.flatnonzero(periodic)
    for _ in range(4):
        if idx.size < 2:
            break
        a, b = rng.choice(idx, size=2, replace=False)
        step = np.eye(3, dtype=int)
        step[a, b] = rng.choice([-1, 1])
        u = step @ u
    return u


def _outputs(
    model: Callable, atoms, build_graph: Callable, names: Mapping[str, str], optional: Sequence[str] = ()
) -> Dict[str, torch.Tensor]:
    """The model's outputs ``names`` in float64; those in ``optional`` may be absent."""
    # sciml models compute stress only when asked (it costs a strain derivative).
    kwargs = {"compute_stress": True} if "stress" in names else {}
    result = model(build_graph(atoms), **kwargs)
    missing = [n for n in names if n not in result and n not in optional]
    if missing:
        raise KeyError(f"model output lacks {missing}; it returned {sorted(result)}")
    return {n: result[n].detach().to(torch.float64).cpu() for n in names if n in result}


def _rotate(value: torch.Tensor, kind: str, rot: torch.Tensor) -> torch.Tensor:
    if kind in ("vector", "atom_vector", "atom_position"):
        return value @ rot.T
    if kind == "tensor":
        return rot @ value @ rot.T
    return value


def check_equivariance(
    model: Callable[[AtomicGraph], Dict[str, torch.Tensor]],
    atoms,
    outputs: Optional[Mapping[str, str]] = None,
    checks: Sequence[str] = ("rotation", "translation", "permutation", "supercell", "lattice_basis", "wrap"),
    build_graph: Optional[Callable] = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    inputs: Mapping[str, str] = {},
) -> EquivarianceReport:
    """Measure how far ``model`` is from invariance/equivariance on one ``ase.Atoms``.

    Args:
        model: maps an AtomicGraph to a dict of tensors. Its graph spec (``GraphSpec.of(model)``)
            defines the graph unless ``build_graph`` is given.
        atoms: the test structure (periodic checks run only where ``atoms.pbc`` has a True).
        outputs: output name -> kind (see the module table); defaults to energy, forces, stress
            (stress only for periodic structures and models that return it).
        checks: which transformations to apply (``ALL_CHECKS`` lists them).
        build_graph: ``atoms -> AtomicGraph``; defaults to ``AtomicGraph.from_ase`` with the
            model's graph spec.
        dtype: floating dtype of the graph (float64 makes errors reflect the model, not rounding).
        inputs: per-atom model inputs stored in ``atoms.arrays``, name -> kind ("atom_vector" ones
            are rotated with the structure; all move with permutations and supercells);
            ``build_graph`` must read them.

    Returns:
        An :class:`EquivarianceReport` of max absolute errors per check and output.
    """
    rng = np.random.default_rng(seed)
    periodic = np.asarray(atoms.pbc, dtype=bool)
    explicit = outputs is not None
    outputs = dict(outputs or {k: v for k, v in DEFAULT_OUTPUTS.items() if k != "stress" or periodic.any()})
    unknown = [k for k in outputs.values() if k not in KINDS] + [c for c in checks if c not in ALL_CHECKS]
    if unknown:
        raise ValueError(f"unknown output kinds or checks {unknown}; kinds are {KINDS}, checks {ALL_CHECKS}")
    if build_graph is None:

        def build_graph(a):
            return AtomicGraph.from_ase(a, GraphSpec.of(model), dtype=dtype)

    # A default stress is dropped for models that return none (direct-force models).
    reference = _outputs(model, atoms, build_graph, outputs, optional=() if explicit else ("stress",))
    outputs = {name: kind for name, kind in outputs.items() if name in reference}
    report = EquivarianceReport()
    for check in checks:
        if check in _PERIODIC_CHECKS and not periodic.any():
            continue
        moved = atoms.copy()
        expected = dict(reference)
        if check in ("rotation", "reflection"):
            rot = random_rotation(rng, proper=check == "rotation")
            moved.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
            moved.positions = atoms.positions @ rot.T
            for name in (n for n, kind in inputs.items() if kind == "atom_vector"):
                moved.arrays[name] = atoms.arrays[name] @ rot.T
            rot_t = torch.as_tensor(rot)
            expected = {n: _rotate(v, outputs[n], rot_t) for n, v in reference.items()}
        elif check == "translation":
            shift = rng.normal(size=3) * 3.0
            moved.positions = atoms.positions + shift
            expected = {
                n: v + torch.as_tensor(shift) if outputs[n] == "atom_position" else v for n, v in reference.items()
            }
        elif check == "permutation":
            perm = rng.permutation(len(atoms))
            if len(atoms) > 1 and np.all(perm == np.arange(len(atoms))):
                perm = np.roll(perm, 1)  # an identity permutation would test nothing
            moved = atoms[perm]
            expected = {n: v[perm] if outputs[n].startswith("atom_") else v for n, v in reference.items()}
        elif check == "supercell":
            reps = [1, 1, 1]
            reps[int(np.flatnonzero(periodic)[0])] = 2
            moved = atoms.repeat(reps)
            count = 2
            expected = {}
            for n, v in reference.items():
                kind = outputs[n]
                expected[n] = v * count if kind == "energy" else v.repeat(count, *([1] * (v.ndim - 1))) if kind.startswith("atom_") else v
            for n, kind in outputs.items():
                if kind == "atom_position":
                    expected.pop(n)  # image atoms sit at translated positions; compared by other checks
        elif check == "lattice_basis":
            moved.set_cell(_unimodular(rng, periodic) @ atoms.cell.array, scale_atoms=False)
        elif check == "wrap":
            images = rng.integers(-2, 3, size=(len(atoms), 3)) * periodic
            moved.positions = atoms.positions + images @ atoms.cell.array
            expected = {n: v for n, v in reference.items() if outputs[n] != "atom_position"}
        got = _outputs(model, moved, build_graph, {n: outputs[n] for n in expected})
        report.errors[check] = {n: float((got[n] - expected[n]).abs().max()) if got[n].numel() else 0.0 for n in expected}
    return report


def assert_equivariant(model, atoms, tolerance: float = 1e-6, **kwargs) -> EquivarianceReport:
    """Run :func:`check_equivariance` and raise AssertionError when any error exceeds ``tolerance``."""
    report = check_equivariance(model, atoms, **kwargs)
    if report.max_error() > tolerance:
        raise AssertionError(f"model is not equivariant within {tolerance:g}:\n{report}")
    return report

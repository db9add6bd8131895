"""The charged n-body system of the EGNN paper (Satorras et al. 2021), batched over simulations.

Follows the reference generator ``ChargedParticlesSim`` of Kipf et al. (NRI,
``data/synthetic_sim.py``) in the 3D variant used by EGNN (``n_body_system/dataset``): ``n`` unit
mass particles with charges ``q = ±1`` (each with probability 1/2) interact by the Coulomb-like
force

    F_i = k * sum_{j != i} q_i q_j (x_i - x_j) / |x_i - x_j|^3      (repulsive for equal signs),

each component clipped to ``±0.1 / delta_T``. Initial positions are ``N(0, loc_std^2)`` per
component; initial velocities have random directions and norm ``vel_norm``. Integration is the
reference's kick-drift scheme: ``v += dt F(x)`` then, for each of the following ``length - 1``
steps, ``x += dt v`` (recorded every ``sample_freq`` steps) followed by ``v += dt F(x)``. As in the
reference, the initial state is not recorded, so there are ``length // sample_freq - 1`` frames
(49 for the defaults; frame ``t`` is step ``(t + 1) * sample_freq``). There are no walls (the
reference reflects only initial positions beyond ``|x| > 5``, a ~1e-5 per-simulation event that is
not reproduced) and no observation noise.

Random numbers are drawn from ``np.random.RandomState(seed)`` in the reference's order, so for
the same seed the charges and initial conditions equal those of the reference (EGNN's
``nbody_small``: seed 43, 10000 train, then 2000 valid, then 2000 test simulations from one stream,
i.e. ``simulate_charged_nbody(14000)``). Trajectories then agree up to floating-point round-off,
which the chaotic dynamics amplifies at close encounters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sciml.io.files import atomic_path

_CHARGE_TYPES = np.array([-1.0, 0.0, 1.0])
_CHARGE_PROB = [0.5, 0.0, 0.5]
_KEYS = ("loc", "vel", "charges", "clipped")


def _initial_conditions(
    rng: np.random.RandomState,
    n_sims: int,
    n_balls: int,
    n_frames: int,
    loc_std: float,
    vel_norm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw charges ``(S, n, 1)``, positions ``(3, n, S)`` and velocities ``(3, n, S)``."""
    charges = np.empty((n_sims, n_balls, 1))
    loc = np.empty((3, n_balls, n_sims))
    vel = np.empty((3, n_balls, n_sims))
    for s in range(n_sims):
        charges[s] = rng.choice(_CHARGE_TYPES, size=(n_balls, 1), p=_CHARGE_PROB)
        loc[..., s] = rng.randn(3, n_balls) * loc_std
        vel[..., s] = rng.randn(3, n_balls)
        # The reference then draws observation noise (scaled by 0): keep the stream aligned.
        rng.randn(n_frames, 3, n_balls)
        rng.randn(n_frames, 3, n_balls)
    vel *= vel_norm / np.linalg.norm(vel, axis=0)
    return charges, loc, vel


class _PairForces:
    """Clipped forces for ``n`` particles in each of ``S`` simulations, over the ``n(n-1)/2`` pairs.

    Arrays put the simulation axis last (``(3, n, S)``) so every operation is vectorised over it.
    """

    def __init__(self, qq: np.ndarray, max_force: float) -> None:
        """``qq``: ``k q_i q_j`` of shape ``(S, n, n)``; ``max_force``: clip per force component."""
        n = qq.shape[1]
        self.i, self.j = np.triu_indices(n, 1)
        pairs = np.arange(len(self.i))
        # incidence (n, P): pair p adds its force to particle i and subtracts it from particle j
        self.incidence = np.zeros((n, len(pairs)))
        self.incidence[self.i, pairs] = 1.0
        self.incidence[self.j, pairs] = -1.0
        self.qq = np.ascontiguousarray(qq[:, self.i, self.j].T)  # (P, S)
        self.max_force = max_force

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forces ``(3, n, S)`` at positions ``x`` ``(3, n, S)``; clipped or not, ``(S,)``."""
        diff = x[:, self.i] - x[:, self.j]  # (3, P, S): x_i - x_j
        r2 = np.einsum("kps,kps->ps", diff, diff)
        diff *= self.qq * r2**-1.5
        forces = np.tensordot(self.incidence, diff, axes=([1], [1])).transpose(1, 0, 2)
        clipped = (np.abs(forces) > self.max_force).any(axis=(0, 1))
        np.clip(forces, -self.max_force, self.max_force, out=forces)
        return forces, clipped


def simulate_charged_nbody(
    n_sims: int,
    n_balls: int = 5,
    length: int = 5000,
    sample_freq: int = 100,
    seed: int = 43,
    *,
    delta_T: float = 0.001,
    loc_std: float = 1.0,
    vel_norm: float = 0.5,
    interaction_strength: float = 1.0,
) -> dict[str, np.ndarray]:
    """Simulate ``n_sims`` independent charged n-body systems at once (see the module docstring).

    Units are those of the reference: dimensionless, unit masses, time step ``delta_T``.

    Args:
        n_sims: number of simulations ``S``.
        n_balls: particles per simulation ``n``.
        length: integration steps per simulation; a multiple of ``sample_freq``.
        sample_freq: steps between recorded frames.
        seed: seed of the ``np.random.RandomState`` stream.
        delta_T: time step; forces are clipped to ``±0.1 / delta_T`` per component.
        loc_std: standard deviation of the initial positions for 5 particles; as in EGNN's
            reference it is scaled by ``(n_balls / 5) ** (1 / 3)`` (constant density).
        vel_norm: norm of each initial velocity.
        interaction_strength: prefactor ``k`` of the force.

    Returns:
        ``loc`` and ``vel``, float64 ``(S, T, n, 3)`` with ``T = length // sample_freq - 1``;
        ``charges``, float64 ``(S, n, 1)`` of ±1; ``clipped``, bool ``(S,)``, true where a force
        component was clipped at some step (energy is then not conserved).
    """
    if n_sims < 1 or n_balls < 2 or sample_freq < 1:
        raise ValueError("need n_sims >= 1, n_balls >= 2 and sample_freq >= 1")
    if length % sample_freq or length < 2 * sample_freq:
        raise ValueError(f"length {length} must be a multiple >= 2 of sample_freq {sample_freq}")
    n_frames = length // sample_freq - 1
    rng = np.random.RandomState(seed)
    loc_std = loc_std * (n_balls / 5.0) ** (1.0 / 3.0)
    charges, x, v = _initial_conditions(rng, n_sims, n_balls, n_frames, loc_std, vel_norm)
    forces = _PairForces(interaction_strength * charges * charges.transpose(0, 2, 1), 0.1 / delta_T)

    loc = np.empty((n_sims, n_frames, n_balls, 3))
    vel = np.empty((n_sims, n_frames, n_balls, 3))
    force, clipped = forces(x)
    v += delta_T * force
    for step in range(1, length):
        x += delta_T * v
        if step % sample_freq == 0:
            loc[:, step // sample_freq - 1] = x.transpose(2, 1, 0)
            vel[:, step // sample_freq - 1] = v.transpose(2, 1, 0)
        force, clipped_now = forces(x)
        clipped |= clipped_now
        v += delta_T * force
    return {"loc": loc, "vel": vel, "charges": charges, "clipped": clipped}


def nbody_samples(
    sim: dict[str, np.ndarray], frame_in: int = 30, frame_out: int = 40
) -> dict[str, np.ndarray]:
    """Input/target pairs as in EGNN's ``main_nbody.py`` (``nbody_small``: frames 30 -> 40).

    Returns:
        ``loc`` and ``vel`` ``(S, n, 3)`` at ``frame_in``, ``charges`` ``(S, n, 1)`` and
        ``loc_target`` ``(S, n, 3)``, the positions at ``frame_out``.
    """
    return {
        "loc": sim["loc"][:, frame_in],
        "vel": sim["vel"][:, frame_in],
        "charges": sim["charges"],
        "loc_target": sim["loc"][:, frame_out],
    }


def save_nbody(path: str | Path, sim: dict[str, np.ndarray]) -> None:
    """Save a :func:`simulate_charged_nbody` result to one ``.npz`` file, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{key: sim[key] for key in _KEYS})


def load_nbody(path: str | Path) -> dict[str, np.ndarray]:
    """Load a file written by :func:`save_nbody`; returns the same dictionary of arrays."""
    with np.load(path) as data:
        missing = set(_KEYS) - set(data.files)
        if missing:
            raise ValueError(f"{path}: not an n-body file, missing arrays {sorted(missing)}")
        return {key: data[key] for key in _KEYS}

"""Turn simulated charged n-body systems into the extxyz file the trainer reads (EGNN's nbody_small).

One frame per simulation: positions = ``loc`` at frame 30, per-atom arrays ``velocities`` (frame
30), ``charges`` (±1) and ``positions_target`` (``loc`` at frame 40, i.e. 1,000 integration steps
later); no cell, no periodicity, every particle is hydrogen (the model ignores elements).

The reference (``generate_dataset.py --num-train 10000 --seed 43 --sufix small``) draws 10,000
training, then 2,000 validation, then 2,000 test simulations from one random stream, and its
loader keeps the first 3,000 training simulations. ``simulate_charged_nbody(14000, seed=43)``
reproduces that stream, so the file holds simulations 0..2999 (train), 10000..11999 (valid) and
12000..13999 (test), in that order: ``split.ranges`` ``{train: [0, 3000], valid: [3000, 5000],
test: [5000, 7000]}``.

Usage (from the repository root)::

    python workflows/nbody/prepare.py                 # simulate 14,000 systems (~30 s), write
    python workflows/nbody/prepare.py --sims sims.npz # reuse a save_nbody file (simulates and
                                                      # saves it there when it does not exist)
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import ase
import ase.io
import numpy as np

from sciml.data.generators.nbody import (
    load_nbody,
    nbody_samples,
    save_nbody,
    simulate_charged_nbody,
)

# (name, first simulation, count) of the reference's nbody_small split with --num-train 10000.
REFERENCE_SETS: tuple[tuple[str, int, int], ...] = (("train", 0, 3000), ("valid", 10000, 2000), ("test", 12000, 2000))


def nbody_frames(sim: dict[str, np.ndarray], frame_in: int = 30, frame_out: int = 40) -> list:
    """One ``ase.Atoms`` per simulation (see the module docstring for its arrays)."""
    samples = nbody_samples(sim, frame_in, frame_out)
    frames = []
    for loc, vel, charges, target in zip(samples["loc"], samples["vel"], samples["charges"], samples["loc_target"]):
        atoms = ase.Atoms(numbers=np.ones(len(loc), dtype=int), positions=loc, pbc=False)
        atoms.arrays["velocities"] = np.ascontiguousarray(vel)
        atoms.arrays["charges"] = np.ascontiguousarray(charges[:, 0])
        atoms.arrays["positions_target"] = np.ascontiguousarray(target)
        frames.append(atoms)
    return frames


def select_sets(sim: dict[str, np.ndarray], sets: Sequence[tuple[str, int, int]] = REFERENCE_SETS):
    """The simulations of ``sets`` concatenated in order, and each set's ``[start, stop)`` range."""
    if max(first + count for _, first, count in sets) > len(sim["loc"]):
        raise ValueError(f"the sets {sets} need more than the {len(sim['loc'])} simulations given")
    index = np.concatenate([np.arange(first, first + count) for _, first, count in sets])
    ranges, start = {}, 0
    for name, _, count in sets:
        ranges[name] = [start, start + count]
        start += count
    return {key: value[index] for key, value in sim.items()}, ranges


def constant_position_mse(frames: Sequence[ase.Atoms]) -> float:
    """MSE of predicting x(frame 40) = x(frame 30), the trivial baseline."""
    return float(np.mean([np.mean((a.positions - a.arrays["positions_target"]) ** 2) for a in frames]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sims", type=Path, default=None, help="save_nbody .npz of >= 14000 simulations")
    parser.add_argument("--output", type=Path, default=Path("datasets/nbody/nbody_small.extxyz"))
    parser.add_argument("--seed", type=int, default=43)
    args = parser.parse_args(argv)
    needed = max(first + count for _, first, count in REFERENCE_SETS)
    if args.sims is not None and args.sims.exists():
        sim = load_nbody(args.sims)
    else:
        sim = simulate_charged_nbody(needed, seed=args.seed)
        if args.sims is not None:
            save_nbody(args.sims, sim)
    selected, ranges = select_sets(sim, REFERENCE_SETS)
    frames = nbody_frames(selected)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(args.output, frames, format="extxyz")
    print(f"wrote {len(frames)} frames to {args.output}; split.ranges: {ranges}")
    for name, (start, stop) in ranges.items():
        print(f"  {name}: constant-position baseline MSE {constant_position_mse(frames[start:stop]):.5f}")


if __name__ == "__main__":
    main()

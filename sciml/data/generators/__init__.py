"""Generators of training data: semi-empirical MD trajectories, the charged n-body system and EMT crystals."""

from sciml.data.generators.crystals import generate_crystals, perturbed_crystals, write_crystal_dataset
from sciml.data.generators.nbody import (
    load_nbody,
    nbody_samples,
    save_nbody,
    simulate_charged_nbody,
)
from sciml.data.generators.xtb_md import MOLECULE_ALIASES, generate_xtb_md

__all__ = [
    "MOLECULE_ALIASES",
    "generate_crystals",
    "perturbed_crystals",
    "write_crystal_dataset",
    "generate_xtb_md",
    "load_nbody",
    "nbody_samples",
    "save_nbody",
    "simulate_charged_nbody",
]

"""``sciml md`` and ``sciml relax``: ase dynamics and optimisation with a trained model."""

from __future__ import annotations

import numpy as np

from sciml.cli.common import (add_command, add_domain_option, add_runtime_options, add_species_argument,
                              load_calculator, read_one_structure, refuse_overwrite)

MD_EXAMPLES = """  sciml md runs/ethanol/best.pt datasets/ethanol_xtb_500K/ethanol_xtb_500K.extxyz --steps 500
  sciml md model.pt POSCAR --ensemble langevin --temperature 300 --timestep 1.0 --output traj.extxyz
"""
RELAX_EXAMPLES = """  sciml relax runs/ethanol/best.pt molecule.xyz --fmax 0.05
  sciml relax model.pt POSCAR --cell --output relaxed.extxyz
"""


def register(sub) -> None:
    md = add_command(sub, "md", "run molecular dynamics with a trained model (ase)", MD_EXAMPLES)
    md.add_argument("checkpoint", help="model checkpoint (.pt), or a package of sciml export (.pt2)")
    md.add_argument("structure", help="initial structure (any ase-readable file; the last frame is used)")
    md.add_argument("--ensemble", choices=["nve", "langevin"], default="nve")
    md.add_argument("--steps", type=int, default=200)
    md.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    md.add_argument("--temperature", type=float, default=300.0, help="initial/thermostat temperature, K")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--output", help="write the trajectory as extxyz")
    md.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    add_runtime_options(md, "float64")
    add_domain_option(md)
    add_species_argument(md)
    md.set_defaults(run=run_md)

    relax = add_command(sub, "relax", "relax a structure with a trained model (ase BFGS)", RELAX_EXAMPLES)
    relax.add_argument("checkpoint", help="model checkpoint (.pt), or a package of sciml export (.pt2)")
    relax.add_argument("structure")
    relax.add_argument("--fmax", type=float, default=0.05, help="force convergence, eV/Å")
    relax.add_argument("--steps", type=int, default=500)
    relax.add_argument("--cell", action="store_true", help="also relax the cell (FrechetCellFilter)")
    relax.add_argument("--output", help="write the relaxed structure as extxyz")
    relax.add_argument("--force", action="store_true")
    add_runtime_options(relax, "float64")
    add_domain_option(relax)
    add_species_argument(relax)
    relax.set_defaults(run=run_relax)


def run_md(args) -> int:
    from sciml.simulate import run_md as simulate

    output = refuse_overwrite(args.output, args.force) if args.output else None
    atoms = read_one_structure(args.structure, args.species)
    atoms.calc = load_calculator(args)
    atoms.calc.check_structure(atoms)
    report = simulate(
        atoms, steps=args.steps, timestep_fs=args.timestep, temperature_K=args.temperature,
        ensemble=args.ensemble, friction_per_fs=args.friction, seed=args.seed, trajectory=output,
    )
    print(report.summary())
    return 0


def run_relax(args) -> int:
    from sciml.simulate import relax

    output = refuse_overwrite(args.output, args.force) if args.output else None
    atoms = read_one_structure(args.structure, args.species)
    atoms.calc = load_calculator(args)
    atoms.calc.check_structure(atoms)
    steps, converged = relax(atoms, fmax=args.fmax, steps=args.steps, cell=args.cell, output=output)
    fmax = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    print(f"{'converged' if converged else 'NOT converged'} after {steps} steps: "
          f"energy {atoms.get_potential_energy():.6f} eV, max force {fmax:.4f} eV/Å")
    return 0 if converged else 1

"""``sciml md`` and ``sciml relax``: ase dynamics and optimisation with a trained model."""

from __future__ import annotations

import numpy as np

from sciml.md_log import ENSEMBLES

from sciml.cli.common import (add_command, add_domain_option, add_runtime_options, add_species_argument,
                              load_calculator, read_one_structure, refuse_overwrite)

MD_EXAMPLES = """  sciml md runs/ethanol/best.pt datasets/ethanol_xtb_500K/ethanol_xtb_500K.extxyz --steps 500
  sciml md model.pt POSCAR --ensemble langevin --temperature 300 --timestep 1.0 --output traj.extxyz
  sciml md model.pt POSCAR --ensemble nvt-bussi --taut 100 --steps 100000 --interval 100 --output md.extxyz
  sciml md model.pt POSCAR --ensemble npt --pressure 1.0 --taup 1000 --output npt.traj --log npt.log
  sciml md model.pt slab.extxyz --ensemble langevin --fix-tags 0 --output slab_md.extxyz
  sciml md model.pt --restart md.extxyz --steps 50000 --ensemble nvt-bussi   # continue md.extxyz
  sciml plot md md.log --output md.png

Frames are appended to --output (extxyz, or ase .traj by suffix) and flushed every --interval steps,
each with energy, forces, stress (periodic), temperature_K, step and time_fs. The log (--log, by
default beside the trajectory: md.extxyz -> md.log; none without --output unless --log is given)
has one header line and the columns time_fs step epot_eV ekin_eV etot_eV temperature_K, plus
pressure_GPa volume_A3 for fully periodic structures. Memory stays flat in --steps.
Ensembles: nve (velocity Verlet); langevin (--friction); nvt-bussi (stochastic velocity rescaling,
--taut); nose-hoover (Nose-Hoover chain, --taut); npt (MTK, Nose-Hoover chains on particles and
cell, --pressure --taup --taut --cell; no constraints); npt-berendsen (--pressure --taup --taut
--compressibility; works with fixed atoms, which keep their fractional coordinates as the cell
scales). Constraints read with the structure (extxyz move_mask,
POSCAR selective dynamics) and --fix-tags are honoured by every ensemble. --restart continues the
last complete frame of a trajectory (positions, momenta, cell, constraints, step and time; the
thermostat/barostat variables start afresh) and appends to it and its log.
"""
RELAX_EXAMPLES = """  sciml relax runs/ethanol/best.pt molecule.xyz --fmax 0.05
  sciml relax model.pt POSCAR --cell --output relaxed.extxyz
"""


def register(sub) -> None:
    md = add_command(sub, "md", "run molecular dynamics with a trained model (ase), streaming frames and a log",
                     MD_EXAMPLES)
    md.add_argument("checkpoint", help="model checkpoint (.pt), or a package of sciml export (.pt2)")
    md.add_argument("structure", nargs="?",
                    help="initial structure (any ase-readable file; the last frame is used); not with --restart")
    md.add_argument("--ensemble", choices=list(ENSEMBLES), default="nve")
    md.add_argument("--steps", type=int, default=200, help="MD steps to run (with --restart: further steps)")
    md.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    md.add_argument("--temperature", type=float, default=300.0,
                    help="initial velocities (fresh runs) and thermostat target, K (default 300)")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    md.add_argument("--taut", type=float, default=100.0,
                    help="thermostat time constant of nvt-bussi, nose-hoover and npt*, fs (default 100)")
    md.add_argument("--pressure", type=float, default=0.0, help="npt target pressure, GPa (default 0)")
    md.add_argument("--taup", type=float, default=1000.0, help="barostat time constant of npt*, fs (default 1000)")
    md.add_argument("--compressibility", type=float, default=0.01,
                    help="npt-berendsen compressibility, 1/GPa (about 1/bulk modulus; default 0.01)")
    md.add_argument("--cell", choices=["isotropic", "full"], default="isotropic",
                    help="npt cell fluctuations: isotropic (shape kept; default) or full")
    md.add_argument("--fix-tags", type=int, nargs="+", metavar="TAG",
                    help="fix the atoms with these tags (OC20 slabs: --fix-tags 0 fixes the subsurface)")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--interval", type=int, default=1, help="write a frame and a log row every N steps (default 1)")
    md.add_argument("--output", help="trajectory to stream to: .extxyz/.xyz (extxyz) or .traj (ase)")
    md.add_argument("--log", help="MD log (default: the --output path with suffix .log; none without --output)")
    md.add_argument("--restart", metavar="TRAJECTORY",
                    help="continue from the last frame of this trajectory, appending to it (and to its log)")
    md.add_argument("--force", action="store_true", help="overwrite --output and --log if they exist")
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
    from pathlib import Path

    from sciml.md_log import check_trajectory_path, default_log_path, read_last_frame
    from sciml.simulate import MDSettings, fix_tags, run_md as simulate

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.interval < 1:
        raise ValueError(f"--interval must be >= 1, got {args.interval}")
    restart = args.restart is not None
    if restart:
        if args.structure is not None:
            raise ValueError("give either a STRUCTURE or --restart TRAJECTORY, not both")
        if args.output is not None and Path(args.output) != Path(args.restart):
            raise ValueError("--restart appends to its own trajectory; leave out --output")
        output = Path(args.restart)
        check_trajectory_path(output)
        atoms = read_last_frame(output)
        log = Path(args.log) if args.log else default_log_path(output)
    else:
        if args.structure is None:
            raise ValueError("give a STRUCTURE file (or --restart TRAJECTORY)")
        output = Path(args.output) if args.output else None
        if output is not None:
            check_trajectory_path(output)
            refuse_overwrite(output, args.force)
        log = Path(args.log) if args.log else default_log_path(output)
        if log is not None:
            if output is not None and log.resolve() == output.resolve():
                raise ValueError("--log and --output must be different files")
            if log.exists() and not args.force:
                raise ValueError(f"{log} already exists; pass --force to overwrite it or choose another --log")
        atoms = read_one_structure(args.structure, args.species)
    if args.fix_tags:
        fix_tags(atoms, args.fix_tags)
    settings = MDSettings(
        timestep_fs=args.timestep, temperature_K=args.temperature, ensemble=args.ensemble,
        friction_per_fs=args.friction, taut_fs=args.taut, pressure_GPa=args.pressure, taup_fs=args.taup,
        compressibility_per_GPa=args.compressibility, cell=args.cell, seed=args.seed, interval=args.interval,
    )
    settings.check(atoms)  # before loading the model or writing anything
    atoms.calc = load_calculator(args)
    atoms.calc.check_structure(atoms)
    report = simulate(atoms, steps=args.steps, settings=settings, trajectory=output, log=log, restart=restart)
    print(report.summary())
    written = [str(p) for p in (output, log) if p is not None]
    if written:
        print(f"{'appended to' if restart else 'wrote'} {' and '.join(written)}")
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

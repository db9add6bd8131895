"""``sciml data generate``: make training data with real physics (GFN2-xTB MD, charged n-body)."""

from __future__ import annotations

from sciml.cli.common import add_command, refuse_overwrite

EXAMPLES = """  sciml data generate xtb-md --molecule ethanol --frames 1500 --temperature 500 --stride 10 --output ethanol.extxyz
  sciml data generate nbody --simulations 5000 --seed 43 --output nbody.npz
"""


def register(sub) -> None:
    data = add_command(sub, "data", "generate datasets", EXAMPLES)
    actions = data.add_subparsers(dest="action", metavar="<action>", required=True)
    generate = add_command(actions, "generate", "generate a dataset", EXAMPLES)
    kinds = generate.add_subparsers(dest="kind", metavar="<kind>", required=True)

    md = kinds.add_parser("xtb-md", help="GFN2-xTB Langevin MD of a small molecule (needs tblite)")
    md.add_argument("--molecule", default="ethanol", help="ase.build.molecule name or alias (ethanol, water, ...)")
    md.add_argument("--frames", type=int, default=1000)
    md.add_argument("--temperature", type=float, default=500.0, help="K")
    md.add_argument("--timestep", type=float, default=0.5, help="fs")
    md.add_argument("--friction", type=float, default=0.01, help="1/fs")
    md.add_argument("--stride", type=int, default=10, help="MD steps between saved frames")
    md.add_argument("--equilibration", type=int, default=100, help="MD steps discarded first")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--output", required=True, help="extxyz file")
    md.add_argument("--force", action="store_true")
    md.set_defaults(run=_run_xtb)

    nbody = kinds.add_parser("nbody", help="charged 5-particle n-body system of the EGNN paper")
    nbody.add_argument("--simulations", type=int, default=5000)
    nbody.add_argument("--particles", type=int, default=5)
    nbody.add_argument("--seed", type=int, default=43)
    nbody.add_argument("--output", required=True, help=".npz file")
    nbody.add_argument("--force", action="store_true")
    nbody.set_defaults(run=_run_nbody)


def _run_xtb(args) -> int:
    from sciml.data.generators import generate_xtb_md

    output = refuse_overwrite(args.output, args.force)
    frames = generate_xtb_md(
        args.molecule, args.frames, temperature_K=args.temperature, timestep_fs=args.timestep,
        friction_per_fs=args.friction, stride=args.stride, equilibration_steps=args.equilibration,
        seed=args.seed, output=output,
    )
    print(f"wrote {len(frames)} frames to {output}")
    return 0


def _run_nbody(args) -> int:
    from sciml.data.generators import save_nbody, simulate_charged_nbody

    output = refuse_overwrite(args.output, args.force)
    sim = simulate_charged_nbody(args.simulations, n_balls=args.particles, seed=args.seed)
    save_nbody(output, sim)
    print(f"wrote {args.simulations} trajectories to {output}")
    return 0

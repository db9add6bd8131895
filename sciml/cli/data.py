"""``sciml data generate``: make training data with real physics (GFN2-xTB MD, charged n-body,
EMT adsorbate relaxations in OC20's layouts, EMT-relaxed random crystals in the JARVIS and MatBench
layouts, 2D Navier-Stokes vorticity in FNO's .mat layout); ``sciml data preprocess``: OC20 data to a sciml cache."""

from __future__ import annotations

import argparse

from sciml.cli.common import add_command, print_runtime, refuse_nonempty_dir, refuse_overwrite

EXAMPLES = """  sciml data generate xtb-md --molecule ethanol --frames 1500 --temperature 500 --stride 10 --output ethanol.extxyz
  sciml data generate nbody --simulations 5000 --seed 43 --output nbody.npz
  sciml data generate oc20 --systems 20 --seed 0 --output oc20_emt
  sciml data generate crystals --num 500 --seed 0 --output crystals_emt
  sciml data generate navier-stokes --num 100 --forcing symmetric --t-final 30 --output ns_sym.mat
  sciml data preprocess oc20_emt/s2ef --output s2ef_cache.lmdb
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

    oc20 = kinds.add_parser(
        "oc20", help="OC20-like EMT adsorbate relaxations, written as S2EF extxyz.xz + txt, legacy LMDBs and an ASE db",
        description="Relax random adsorbates (H, O, N, C, OH, CO, NH, CH, NO) on small fcc(111)/(100) slabs of "
                    "Cu, Ag, Au, Ni, Pd, Pt with EMT, keeping every step, and write OUTPUT/s2ef/<k>.extxyz.xz + "
                    "<k>.txt, OUTPUT/s2ef.lmdb, OUTPUT/is2re.lmdb and OUTPUT/adslabs.db.",
        epilog="examples:\n  sciml data generate oc20 --systems 20 --seed 0 --output oc20_emt\n"
               "  sciml data generate oc20 --systems 200 --metals Pt Pd --size 3 3 3 --output oc20_pt_pd\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    oc20.add_argument("--systems", type=int, default=20, help="number of adsorbate+slab relaxations")
    oc20.add_argument("--seed", type=int, default=0)
    oc20.add_argument("--metals", nargs="+", metavar="METAL", help="subset of Cu Ag Au Ni Pd Pt (default: all)")
    oc20.add_argument("--adsorbates", nargs="+", metavar="ADS", help="subset of H O N C OH CO NH CH NO (default: all)")
    oc20.add_argument("--size", type=int, nargs=3, default=(2, 2, 3), metavar=("A", "B", "LAYERS"), help="slab size")
    oc20.add_argument("--max-steps", type=int, default=30, help="relaxation steps per system (frames = steps + 1)")
    oc20.add_argument("--fmax", type=float, default=0.05, help="eV/Å, relaxation stops below it")
    oc20.add_argument("--optimizer", choices=("BFGS", "FIRE"), default="BFGS")
    oc20.add_argument("--frames-per-file", type=int, default=200, help="frames per S2EF extxyz.xz file")
    oc20.add_argument("--output", required=True, help="directory")
    oc20.add_argument("--force", action="store_true", help="write into an existing, non-empty directory")
    oc20.set_defaults(run=_run_oc20)

    crystals = kinds.add_parser(
        "crystals", help="random pyxtal crystals relaxed with EMT, written in the JARVIS dft_3d and MatBench layouts",
        description="Draw random crystals with pyxtal (a share in Sohncke space groups, each chiral one followed by "
                    "its mirror image), relax cell and positions with EMT (FIRE + FrechetCellFilter), and write "
                    "OUTPUT/dft_3d.json, OUTPUT/matbench_formation_energy_peratom.json.gz, "
                    "OUTPUT/structures.extxyz (energy, forces, stress) and OUTPUT/cifs/<id>.cif.",
        epilog="examples:\n  sciml data generate crystals --num 500 --seed 0 --output crystals_emt\n"
               "  sciml data generate crystals --num 100 --elements Cu Au --max-atoms 6 --output cuau\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    crystals.add_argument("--num", type=int, default=100, help="relaxed crystals (mirror images come on top)")
    crystals.add_argument("--seed", type=int, default=0)
    crystals.add_argument("--elements", nargs="+", metavar="EL", help="EMT elements (default: Cu Ag Au Ni Pd Pt Al)")
    crystals.add_argument("--max-atoms", type=int, default=8, help="most atoms in the conventional cell")
    crystals.add_argument("--chiral-fraction", type=float, default=0.3, help="expected share of chiral crystals")
    crystals.add_argument("--no-mirrors", action="store_true", help="do not add the mirror image of chiral crystals")
    crystals.add_argument("--fmax", type=float, default=0.05, help="eV/Å, relaxation stops below it")
    crystals.add_argument("--perturbed", type=int, default=0, metavar="K",
                          help="also write perturbed.extxyz: K rattled and strained copies of each crystal with EMT "
                               "energy, forces and stress (training data for energy models)")
    crystals.add_argument("--max-steps", type=int, default=300, help="FIRE steps per crystal")
    crystals.add_argument("--output", required=True, help="directory")
    crystals.add_argument("--force", action="store_true", help="write into an existing, non-empty directory")
    crystals.set_defaults(run=_run_crystals)

    ns = kinds.add_parser(
        "navier-stokes", help="2D Navier-Stokes vorticity on the periodic unit square, as an FNO-style .mat file",
        description="Solve the vorticity equation pseudo-spectrally (Crank-Nicolson, 2/3 dealiasing) from Gaussian "
                    "random field initial vorticity at --solver-resolution, subsample to --resolution and write a "
                    "MATLAB v5 file with u (N, X, Y, T), a (N, X, Y) and t (1, T), as FNO's ns_V1e-4_N10000_T30.mat.",
        epilog="examples:\n"
               "  sciml data generate navier-stokes --num 100 --forcing symmetric --t-final 30 --output ns_sym.mat\n"
               "  sciml data generate navier-stokes --num 20 --viscosity 1e-3 --forcing fno --t-final 50 "
               "--dt 1e-3 --scheme heun --output ns_v1e-3.mat\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ns.add_argument("--num", type=int, default=100, help="trajectories")
    ns.add_argument("--resolution", type=int, default=64, help="grid points per side written")
    ns.add_argument("--solver-resolution", type=int, default=256, help="grid points per side solved on")
    ns.add_argument("--viscosity", type=float, default=1e-4, help="nu = 1/Re")
    ns.add_argument("--forcing", choices=("symmetric", "fno", "none"), default="symmetric",
                    help="symmetric: 0.1(cos 4pi x + cos 4pi y) (G-FNO NS-sym); fno: 0.1(sin + cos) 2pi(x + y)")
    ns.add_argument("--t-final", type=float, default=30.0, help="final time")
    ns.add_argument("--record-every", type=float, default=1.0, help="time between snapshots")
    ns.add_argument("--dt", type=float, default=1e-4, help="solver time step (FNO and G-FNO: 1e-4)")
    ns.add_argument("--scheme", choices=("euler", "heun"), default="euler", help="explicit step for advection")
    ns.add_argument("--batch-size", type=int, default=16, help="trajectories solved together")
    ns.add_argument("--precision", choices=("float64", "float32"), default="float64")
    ns.add_argument("--device", default="auto", help="auto (a GPU when CUDA works; the default), cpu, cuda or cuda:N")
    ns.add_argument("--seed", type=int, default=0)
    ns.add_argument("--output", required=True, help=".mat file")
    ns.add_argument("--force", action="store_true")
    ns.set_defaults(run=_run_navier_stokes)

    preprocess = add_command(actions, "preprocess", "store OC20 data in a sciml cache (fast random access)",
                             "  sciml data preprocess s2ef_train_200K/ --output s2ef_200k.lmdb\n"
                             "  sciml data preprocess is2re/all/train/data.lmdb --output is2re_train.lmdb\n"
                             "  sciml data preprocess adslabs.db --total-energy --output adslabs.lmdb\n")
    preprocess.add_argument("source", help="S2EF directory of *.extxyz.xz + *.txt, ASE database, fairchem *.lmdb "
                                           "file or directory")
    preprocess.add_argument("--output", required=True, help="cache file (LMDB)")
    preprocess.add_argument("--total-energy", action="store_true",
                            help="keep total energies as the target (default: subtract the reference energies)")
    preprocess.add_argument("--force", action="store_true")
    preprocess.set_defaults(run=_run_preprocess)


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


def _run_oc20(args) -> int:
    from sciml.data.oc20 import relax_adsorbates, write_oc20_dataset
    from sciml.data.oc20.emt_adsorption import ADSORBATES, METALS

    output = refuse_nonempty_dir(args.output, args.force)
    relaxations = relax_adsorbates(args.systems, seed=args.seed, metals=args.metals or METALS,
                                   adsorbates=args.adsorbates or tuple(ADSORBATES),
                                   size=tuple(args.size), fmax=args.fmax, max_steps=args.max_steps,
                                   optimizer=args.optimizer)
    paths = write_oc20_dataset(relaxations, output, frames_per_file=args.frames_per_file)
    frames = sum(len(r.frames) for r in relaxations)
    print(f"wrote {args.systems} relaxations ({frames} S2EF frames) to {output}: "
          + ", ".join(str(p.relative_to(output)) for p in paths.values()))
    return 0


def _run_crystals(args) -> int:
    from sciml.data.generators import generate_crystals, write_crystal_dataset
    from sciml.data.generators.crystals import DEFAULT_ELEMENTS

    output = refuse_nonempty_dir(args.output, args.force)
    crystals = generate_crystals(args.num, seed=args.seed, elements=args.elements or DEFAULT_ELEMENTS,
                                 max_atoms=args.max_atoms, chiral_fraction=args.chiral_fraction,
                                 enantiomorph_pairs=not args.no_mirrors, fmax=args.fmax, max_steps=args.max_steps)
    paths = write_crystal_dataset(crystals, output)
    if args.perturbed:
        from sciml.data.generators import perturbed_crystals
        from sciml.io.files import write_extxyz

        paths["perturbed"] = output / "perturbed.extxyz"
        write_extxyz(paths["perturbed"], perturbed_crystals(crystals, args.perturbed, seed=args.seed))
    mirrors = sum("enantiomorph_of" in a.info for a in crystals)
    print(f"wrote {len(crystals)} structures ({args.num} relaxed crystals + {mirrors} mirror images) to {output}: "
          + ", ".join(str(p.relative_to(output)) for p in paths.values()))
    return 0


def _run_navier_stokes(args) -> int:
    import torch

    from sciml.data.pde import generate_navier_stokes, write_fno_mat
    from sciml.devices import resolve_device

    output = refuse_overwrite(args.output, args.force)
    device, dtype = resolve_device(args.device), getattr(torch, args.precision)
    print_runtime(device, dtype)
    data = generate_navier_stokes(
        args.num, resolution=args.resolution, solver_resolution=args.solver_resolution, viscosity=args.viscosity,
        forcing=args.forcing, t_final=args.t_final, record_every=args.record_every, dt=args.dt, scheme=args.scheme,
        batch_size=args.batch_size, seed=args.seed, dtype=dtype, device=device,
    )
    u = data["vorticity"].numpy().astype("float32")
    write_fno_mat(output, u=u, a=data["initial"].numpy().astype("float32"), t=data["t"].numpy())
    print(f"wrote {args.num} trajectories, u {tuple(u.shape)}, to {output}")
    return 0


def _run_preprocess(args) -> int:
    from sciml.data.oc20 import preprocess

    meta = preprocess(args.source, args.output, subtract_reference=not args.total_energy, force=args.force)
    print(f"wrote {meta['count']} records ({meta['read_options']['format']}) to {args.output}")
    return 0

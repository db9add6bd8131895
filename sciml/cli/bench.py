"""``sciml bench``: speed benchmarks that print ratios against anchors measured in the same run."""

from __future__ import annotations

import time

from sciml.cli.common import add_command

EXAMPLES = """  sciml bench neighbors                      # 1k, 10k, 100k atoms against ase and matscipy
  sciml bench neighbors --sizes 1000 10000 --cutoff 6
  sciml bench md                             # EGNN calculator MD steps/s at 32, 256, 2048 atoms
  sciml bench md --checkpoint runs/ethanol/best.pt --sizes 32 256
  sciml bench egnn                           # EGNN forward/backward against the reference's timings
  sciml bench egnn --train-step              # eager vs torch.compile training step with forces and stress
  sciml bench equiformer_v2                  # EquiformerV2 31M: time and memory vs fairchem
  sciml bench equiformer_v2 --train-step     # eager vs torch.compile training step, small EquiformerV2
  sciml bench equiformer_v2 --fairchem-python ~/fairchem-venv/bin/python --structures 4
  sciml bench comformer                      # iComFormer/eComFormer: time, memory, epoch vs the reference
  sciml bench comformer --reference-python ~/fairchem-venv/bin/python --reference-source ~/AIRS/OpenMat/ComFormer
  sciml bench gfno                           # FNO / G-FNO p4 / p4m 2D: time and memory vs the reference
  sciml bench gfno --sizes 64 --repeats 5
  sciml bench gfno --reference-source ~/AIRS/OpenPDE/G-FNO   # time the reference in the same run
  sciml bench ddp                            # training throughput of 1 vs 2 CPU ranks (torchrun, gloo)
  sciml bench ddp --ranks 1 2 4 --batch 32
  sciml bench tp                             # tensor products, SO(2), Wigner-D, Gaunt vs e3nn (minutes)
  sciml bench tp --channels 16 --lmax 1 2 3 --edges 2000 --sections channelwise conv
  sciml bench tp --sections one_block_per_path fully_connected   # MACE/NequIP layout, FC shared/per-sample
  sciml bench lammps                         # LAMMPS pair_style sciml vs ase MD steps/s, 504-atom ethanol box
  sciml bench lammps --checkpoint runs/ethanol/best.pt --system copper --threads 2
  sciml bench export                         # exported (.pt2) vs eager EGNN and EquiformerV2 inference (minutes)
  sciml bench mace                           # MACE on e3nn vs under sciml.ops.patch_e3nn (needs mace-torch)
  sciml bench mace --structure copper --size 3 --variants L1 --dtype float32 --md-steps 0
"""
TP_SECTIONS = ("channelwise", "one_block_per_path", "fully_connected", "conv", "so3", "gaunt")


def register(sub) -> None:
    parser = add_command(sub, "bench", "run speed benchmarks", EXAMPLES)
    targets = parser.add_subparsers(dest="target", metavar="<target>", required=True)
    neighbors = add_command(targets, "neighbors", "neighbour list vs ase and matscipy", EXAMPLES)
    neighbors.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="atom counts")
    neighbors.add_argument("--cutoff", type=float, default=5.0, help="cutoff radius in Å (default 5)")
    neighbors.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    neighbors.set_defaults(run=_run_neighbors)

    md = add_command(targets, "md", "MD steps/s of the EGNN calculator", EXAMPLES)
    md.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 2048], help="atom counts")
    md.add_argument("--steps", type=int, default=20, help="timed MD steps per size")
    md.add_argument("--checkpoint", help="a trained model (default: EGNN with random weights)")
    md.add_argument("--threads", type=int, default=2)
    md.set_defaults(run=_run_md)

    egnn = add_command(targets, "egnn", "EGNN forward/backward time vs the reference implementation", EXAMPLES)
    egnn.add_argument("--train-step", action="store_true",
                      help="instead: eager vs compiled training step with forces and stress (compiles for minutes)")
    egnn.add_argument("--repeats", type=int, default=10, help="timed training steps of each kind (--train-step)")
    egnn.add_argument("--competing", type=int, default=0, metavar="N",
                      help="time with N CPU-bound processes competing for the CPUs (a shared node); sciml's "
                           "threads follow the free CPUs as in the other commands")
    egnn.add_argument("--fixed-threads", action="store_true",
                      help="with --competing: keep 2 threads whatever the load (as sciml did before)")
    egnn.set_defaults(run=_run_egnn)

    eqv2 = add_command(targets, "equiformer_v2", "EquiformerV2 forward/backward time and memory vs fairchem", EXAMPLES)
    eqv2.add_argument("--config", help="named configuration (default oc20_31M: an OC20-like slab; omat24_31M/86M/153M: "
                                       "a 32-atom MgO bulk cell with the direct stress head; with --train-step, small)")
    eqv2.add_argument("--structures", type=int, default=1, help="28-atom OC20-like slabs in the batch")
    eqv2.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    eqv2.add_argument("--threads", type=int, default=2)
    eqv2.add_argument("--fairchem-python", help="a Python with fairchem-core 1.x: times fairchem in the same run")
    eqv2.add_argument("--train-step", action="store_true",
                      help="instead: eager vs compiled training step with forces and stress (compiles for minutes)")
    eqv2.set_defaults(run=_run_equiformer_v2)

    comformer = add_command(targets, "comformer", "iComFormer/eComFormer time and memory vs the reference (AIRS)",
                            EXAMPLES)
    comformer.add_argument("--crystals", type=int, default=64, help="random crystals in the timed batch")
    comformer.add_argument("--train-crystals", type=int, default=256, help="crystals in the timed training epoch")
    comformer.add_argument("--batch-size", type=int, default=64, help="training batch size")
    comformer.add_argument("--epochs", type=int, default=1, help="timed epochs (after one warm-up); the best is reported")
    comformer.add_argument("--models", nargs="+", choices=("icomformer", "ecomformer"),
                           default=["icomformer", "ecomformer"])
    comformer.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    comformer.add_argument("--threads", type=int, default=2)
    comformer.add_argument("--reference-python", help="a Python with torch_geometric, torch_scatter, e3nn, pydantic")
    comformer.add_argument("--reference-source", help="the AIRS ComFormer source (folder holding comformer/)")
    comformer.set_defaults(run=_run_comformer)

    gfno = add_command(targets, "gfno", "FNO and G-FNO (p4, p4m) 2D forward/backward time and memory vs the reference",
                       EXAMPLES)
    gfno.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="grid sizes n (n x n)")
    gfno.add_argument("--batch", type=int, default=20, help="batch size (the reference's times are for 20)")
    gfno.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    gfno.add_argument("--threads", type=int, default=2)
    gfno.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    gfno.add_argument("--reference-source",
                      help="the AIRS G-FNO source (OpenPDE/G-FNO, needs only torch): times the reference in this run "
                           "on the same batch and weights (default: quote its earlier times)")
    gfno.set_defaults(run=_run_gfno)

    ddp = add_command(targets, "ddp", "data-parallel training throughput: 1 rank vs N ranks, same global batch",
                      EXAMPLES)
    ddp.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts (the first is the anchor)")
    ddp.add_argument("--batch", type=int, default=64, help="global batch, split over the ranks")
    ddp.add_argument("--structures", type=int, default=480, help="ethanol frames (16 validate, the rest train)")
    ddp.add_argument("--epochs", type=int, default=3, help="epochs per run; the last one is timed")
    ddp.set_defaults(run=_run_ddp)

    tp = add_command(targets, "tp", "tensor products and SO(3) kernels vs e3nn, with the machine's roofline", EXAMPLES)
    tp.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64], help="channelwise TP channel counts")
    tp.add_argument("--lmax", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6], help="degrees L of the channelwise TP")
    tp.add_argument("--edges", type=int, default=10_000, help="edges (batch rows) per call")
    tp.add_argument("--threads", type=int, default=2)
    tp.add_argument("--repeats", type=int, default=3, help="timed runs per case; the best is reported")
    tp.add_argument("--sections", nargs="+", choices=TP_SECTIONS, default=list(TP_SECTIONS), help="what to run")
    tp.set_defaults(run=_run_tp)

    lammps = add_command(targets, "lammps", "LAMMPS (pair_style sciml) vs ase MD steps/s, same model and system",
                         EXAMPLES)
    lammps.add_argument("--checkpoint", help="a trained model (default: EGNN of the ethanol workflow, random weights)")
    lammps.add_argument("--system", choices=("ethanol", "copper"), default="ethanol",
                        help="504-atom ethanol box or 500-atom fcc Cu (default ethanol)")
    lammps.add_argument("--steps", type=int, default=30, help="timed MD steps per run")
    lammps.add_argument("--repeats", type=int, default=3, help="runs of each, taking turns")
    lammps.add_argument("--threads", type=int, default=1)
    lammps.set_defaults(run=_run_lammps)

    export = add_command(targets, "export", "exported (.pt2) vs eager inference time, EGNN and EquiformerV2", EXAMPLES)
    export.add_argument("--models", nargs="+", choices=("egnn", "equiformer_v2"), default=["egnn", "equiformer_v2"])
    export.add_argument("--supercells", nargs="+", type=int, default=[2, 3], help="fcc Cu supercells n x n x n (4 n^3 atoms)")
    export.add_argument("--rounds", type=int, default=3, help="rounds of alternating timings (for the spread)")
    export.set_defaults(run=_run_export)

    mace = add_command(targets, "mace", "MACE (mace-torch) built on e3nn vs built under sciml.ops.patch_e3nn",
                       EXAMPLES)
    mace.add_argument("--structure", choices=("water", "copper"), default="water",
                      help="periodic water box or rattled fcc Cu (default water)")
    mace.add_argument("--size", type=int, default=27,
                      help="water molecules (rounded up to a cube; default 27 = 81 atoms) or Cu cubic cells per side")
    mace.add_argument("--variants", nargs="+", choices=("L1", "L2"), default=["L1", "L2"],
                      help="hidden irreps 32x0e+32x1o (L1) and/or 32x0e+32x1o+32x2e (L2)")
    mace.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    mace.add_argument("--repeats", type=int, default=5, help="timed runs of each model, taking turns")
    mace.add_argument("--md-steps", type=int, default=10, help="velocity-Verlet steps per timed MD run (0: no MD)")
    mace.add_argument("--threads", type=int, default=1)
    mace.set_defaults(run=_run_mace)


def _run_neighbors(args) -> int:
    from sciml.bench.neighbors import bench_neighbors, format_neighbor_table

    rows = bench_neighbors(args.sizes, args.cutoff, args.repeats)
    print(format_neighbor_table(rows, args.cutoff))
    return 0


def _run_md(args) -> int:
    from sciml.bench.md import bench_md, format_md_table

    rows = bench_md(args.sizes, args.steps, checkpoint=args.checkpoint, threads=args.threads)
    print(format_md_table(rows, args.checkpoint or "EGNN default config, random weights"))
    return 0


def _run_egnn(args) -> int:
    from sciml.bench.egnn import bench_egnn, bench_egnn_training_step, format_egnn_table
    from sciml.bench.timing import competing_processes
    from sciml.bench.train_step import format_training_step_rows

    from sciml.threads import ThreadGovernor

    with competing_processes(args.competing):
        threads = 2
        if args.competing and not args.fixed_threads:
            governor = ThreadGovernor(max_threads=2)
            time.sleep(0.5)
            threads = governor.update(force=True)
        if args.competing:
            print(f"timed with {args.competing} CPU-bound process{'es' * (args.competing > 1)} competing: "
                  f"{threads} thread{'s' * (threads > 1)} ({'fixed' if args.fixed_threads else 'fitted to the free CPUs'})")
        if args.train_step:
            print(format_training_step_rows(f"EGNN training step, float32 CPU, {threads} threads",
                                            [bench_egnn_training_step(repeats=args.repeats, threads=threads)]))
        else:
            print(format_egnn_table(bench_egnn(threads=threads)))
    return 0


def _run_equiformer_v2(args) -> int:
    from sciml.bench.equiformer_v2 import (bench_equiformer_v2, bench_equiformer_v2_training_step,
                                           format_equiformer_v2_table)
    from sciml.bench.train_step import format_training_step_rows

    if args.train_step:
        row = bench_equiformer_v2_training_step(args.config or "small", args.structures, args.repeats, args.threads)
        print(format_training_step_rows(f"EquiformerV2 training step, float32 CPU, {args.threads} threads", [row]))
        return 0
    result = bench_equiformer_v2(args.config or "oc20_31M", args.structures, args.repeats, args.threads,
                                 args.fairchem_python)
    print(format_equiformer_v2_table(result))
    return 0


def _run_comformer(args) -> int:
    from sciml.bench.comformer import bench_comformer, format_comformer_table

    result = bench_comformer(args.crystals, args.train_crystals, args.batch_size, args.epochs, args.repeats,
                             args.threads, args.reference_python, args.reference_source, args.models)
    print(format_comformer_table(result))
    return 0


def _run_gfno(args) -> int:
    from sciml.bench.gfno import bench_gfno, format_gfno_table

    print(format_gfno_table(bench_gfno(args.sizes, args.batch, args.repeats, args.threads, not args.no_memory,
                                       args.reference_source)))
    return 0


def _run_ddp(args) -> int:
    from sciml.bench.ddp import bench_ddp, format_ddp_table

    print(format_ddp_table(bench_ddp(args.ranks, args.structures, args.batch, args.epochs), args.batch))
    return 0


def _run_tp(args) -> int:
    import torch

    from sciml.bench import tp as bench

    torch.set_num_threads(args.threads)
    limits = bench.machine_limits()
    rows = []
    if "channelwise" in args.sections:
        rows += bench.channelwise_rows(args.channels, args.lmax, args.edges, limits, args.repeats)
    if "one_block_per_path" in args.sections:
        rows += bench.one_block_per_path_rows(32, [(2, args.edges), (3, max(args.edges // 5, 1)), (4, max(args.edges // 5, 1))],
                                              limits, args.repeats)
    if "fully_connected" in args.sections:
        rows += bench.fully_connected_rows(32, [1, 2, 3], args.edges, limits, args.repeats, max(args.edges // 10, 1))
    if "conv" in args.sections:
        rows += bench.conv_rows(32, [1, 2, 3], max(args.edges // 20, 1), args.edges, args.repeats)
    if rows:
        print(bench.format_tp_table(rows, limits), flush=True)
    if "so3" in args.sections:
        from sciml.bench.so3 import format_so3_table, so3_rows

        print("\n" + format_so3_table(so3_rows(args.edges, args.repeats)), flush=True)
    if "gaunt" in args.sections:
        from sciml.bench.gaunt import format_gaunt_table, gaunt_rows

        print("\n" + format_gaunt_table(gaunt_rows(args.edges, repeats=args.repeats)), flush=True)
    return 0


def _run_lammps(args) -> int:
    from sciml.bench.lammps import bench_lammps, format_lammps_table

    print(format_lammps_table(bench_lammps(args.checkpoint, args.system, args.steps, args.repeats, args.threads)))
    return 0


def _run_export(args) -> int:
    from sciml.bench.export import bench_export, format_export_table

    print(format_export_table(bench_export(args.models, args.supercells, args.rounds)))
    return 0


def _run_mace(args) -> int:
    from sciml.bench.mace import format_mace_table, run

    print(format_mace_table(run(args.structure, args.size, args.variants, args.dtype, args.repeats, args.md_steps,
                                args.threads)))
    return 0

"""``sciml bench``: speed benchmarks that print ratios against anchors measured in the same run."""

from __future__ import annotations

from sciml.cli.common import add_command

EXAMPLES = """  sciml bench neighbors                      # 1k, 10k, 100k atoms against ase and matscipy
  sciml bench neighbors --sizes 1000 10000 --cutoff 6
  sciml bench md                             # EGNN calculator MD steps/s at 32, 256, 2048 atoms
  sciml bench md --checkpoint runs/ethanol/best.pt --sizes 32 256
  sciml bench egnn                           # EGNN forward/backward against the reference's timings
"""


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
    egnn.set_defaults(run=_run_egnn)


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
    from sciml.bench.egnn import bench_egnn, format_egnn_table

    print(format_egnn_table(bench_egnn()))
    return 0

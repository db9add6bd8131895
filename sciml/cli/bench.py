"""``sciml bench``: speed benchmarks that print ratios against anchors measured in the same run."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  sciml bench neighbors                      # 1k, 10k, 100k atoms against ase and matscipy
  sciml bench neighbors --sizes 1000 10000 --cutoff 6
"""


def register(sub) -> None:
    parser = sub.add_parser(
        "bench", help="run speed benchmarks", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    targets = parser.add_subparsers(dest="target", metavar="<target>", required=True)
    neighbors = targets.add_parser("neighbors", help="neighbour list vs ase and matscipy", epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    neighbors.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="atom counts")
    neighbors.add_argument("--cutoff", type=float, default=5.0, help="cutoff radius in Å (default 5)")
    neighbors.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    neighbors.set_defaults(run=_run_neighbors)


def _run_neighbors(args) -> int:
    from sciml.bench.neighbors import bench_neighbors, format_neighbor_table

    rows = bench_neighbors(args.sizes, args.cutoff, args.repeats)
    print(format_neighbor_table(rows, args.cutoff))
    return 0

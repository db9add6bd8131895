"""The ``sciml`` command line: ``sciml <command> [options]``; ``sciml <command> --help`` for each."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from sciml import __version__
from sciml.cli import bench, check, data, export, info, lammps, md, plot, predict, slurm, train


# Each module registers its subcommand(s); md registers both "md" and "relax".
MODULES = (train, predict, md, data, check, info, plot, bench, slurm, lammps, export)
# Commands whose torch threads follow the CPUs other processes leave free (sciml.threads);
# benchmarks choose their thread counts themselves.
ADAPTIVE_THREADS = ("train", "predict", "md", "relax", "eval", "check", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sciml",
        description="Equivariant scientific machine learning for molecules, crystals and PDEs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sciml {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for module in MODULES:
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in ADAPTIVE_THREADS:
        from sciml.threads import enable_adaptive_threads

        enable_adaptive_threads()
    try:
        return int(args.run(args) or 0)
    # User-facing failures (bad input, files, diverged training) print one line; --debug re-raises.
    except (ValueError, FileNotFoundError, PermissionError, FloatingPointError, KeyError) as err:
        if args.debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"sciml {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

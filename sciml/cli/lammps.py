"""``sciml lammps``: build the LAMMPS plugin and the C++ predict program, and report the setup."""

from __future__ import annotations

import sys

from sciml.cli.common import add_command

EXAMPLES = """  sciml lammps build                      # compile pair_sciml.so (cached); prints its path
  sciml lammps build --predict            # also the sciml_predict program
  lmp -in in.ethanol -var plugin $(sciml lammps build) -var model ethanol.pt2
  sciml lammps info                       # versions, ABI, library paths, what is built
"""


def register(sub) -> None:
    parser = add_command(sub, "lammps", "LAMMPS plugin and C++ program for exported (.pt2) models", EXAMPLES)
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    build = add_command(actions, "build", "compile the pair_style sciml plugin (and sciml_predict); print paths",
                        EXAMPLES)
    build.add_argument("--predict", action="store_true", help="also build the sciml_predict program")
    build.set_defaults(run=_run_build)
    info = add_command(actions, "info", "versions, C++ ABI and library paths of torch, lammps and mpich", EXAMPLES)
    info.set_defaults(run=_run_info)


def _run_build(args) -> int:
    from sciml.deploy.lammps import BuildError, build_plugin, build_predict

    try:
        if args.predict:
            print(build_predict())
        print(build_plugin())
    except BuildError as err:
        print(f"sciml lammps build: error: {err}", file=sys.stderr)
        return 2
    return 0


def _run_info(args) -> int:
    import torch

    from sciml.deploy.lammps import BuildError, built_plugin, lammps_install
    from sciml.ops.cbuild import cache_dir

    print(f"torch        {torch.__version__} (C++11 ABI {int(torch._C._GLIBCXX_USE_CXX11_ABI)})")
    print(f"build cache  {cache_dir('deploy')}")
    try:
        install = lammps_install()
    except BuildError as err:
        print(f"lammps       not usable: {err}")
        return 2
    print(f"lammps       {install.version} at {install.root}")
    print(f"  headers    {install.include}")
    print(f"mpich        libmpi.so.12 in {install.mpi_lib} (lmp needs it on LD_LIBRARY_PATH; the lmp console "
          f"script adds it)")
    print(f"plugin       {built_plugin() or 'not built yet: run sciml lammps build'}")
    return 0

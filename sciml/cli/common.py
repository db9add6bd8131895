"""Helpers shared by the ``sciml`` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence


def add_command(sub, name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand parser whose ``--help`` ends with usage examples."""
    return sub.add_parser(
        name, help=help_text, description=help_text, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def refuse_overwrite(path: "str | Path", force: bool) -> Path:
    """Return ``path``; raise ValueError if it exists and ``force`` is not set."""
    path = Path(path)
    if path.exists() and not force:
        raise ValueError(f"{path} already exists; pass --force to overwrite it or choose another --output")
    return path


def refuse_nonempty_dir(path: "str | Path", force: bool) -> Path:
    """Return ``path``; raise ValueError if it is a file, or a non-empty folder without ``force``."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not force):
        raise ValueError(f"{path} already exists and is not an empty directory; pass --force to write into it "
                         f"or choose another --output")
    return path


def load_calculator(checkpoint: str, device: str):
    from sciml.calculator import SciMLCalculator

    return SciMLCalculator.from_checkpoint(checkpoint, device=device)


def read_one_structure(path: str, species: "Sequence[str] | None" = None):
    """The last structure of a file (CIF, POSCAR, xyz, extxyz, ...), as ase.Atoms; ``species``
    names the elements of a POSCAR without a species line (``--species``)."""
    from sciml.data.readers import read_structures

    return read_structures(path, index="-1:", energy_key=None, forces_key=None, stress_key=None,
                           species=species)[-1]


def add_species_argument(parser: argparse.ArgumentParser) -> None:
    """``--species Fe O ...``: the elements of a POSCAR/CONTCAR without a species line."""
    parser.add_argument("--species", nargs="+", metavar="ELEMENT",
                        help="elements of a POSCAR/CONTCAR without a species line (VASP 4), in the order of its "
                             "count line; such a file is refused without it")

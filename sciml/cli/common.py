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


def add_runtime_options(parser: argparse.ArgumentParser, dtype_default: str) -> None:
    """``--device`` (default auto) and ``--dtype``; ``dtype_default`` says what no ``--dtype`` means."""
    parser.add_argument("--device", default="auto",
                        help="auto (a GPU when CUDA works, else the CPU; the default), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", choices=("float32", "float64"), help=f"precision of the model (default: {dtype_default})")


def add_domain_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-unknown-elements``: predict structures with elements the model was not trained on."""
    parser.add_argument("--allow-unknown-elements", action="store_true",
                        help="predict structures with elements outside the checkpoint's training domain "
                             "(with a warning) instead of refusing them")


def print_runtime(device, dtype) -> None:
    """The first line of a command's output: the device and dtype in use (errors stay one line on stderr)."""
    from sciml.devices import runtime_line

    print(runtime_line(device, dtype), flush=True)


def load_calculator(args):
    """The calculator of ``args.checkpoint`` with ``--device``/``--dtype`` (default float64) and
    ``--allow-unknown-elements``; prints the runtime line."""
    from sciml.calculator import SciMLCalculator

    calc = SciMLCalculator.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype,
                                           allow_unknown_elements=args.allow_unknown_elements)
    print_runtime(calc.device, calc.dtype)
    return calc


def graphs_as_trained(args, model, data: dict, path) -> list:
    """The labelled structures of ``path`` as graphs, read the way the checkpoint's training read its
    data (``data``: the saved ``train_config["data"]``: format, keys, properties), with
    ``--energy-key``/``--forces-key``/``--stress-key`` replacing the saved keys ('none' drops a label)."""
    from sciml.graph import GraphSpec
    from sciml.inference import model_dtype
    from sciml.train.atomistic import load_training_graphs
    from sciml.train.config import DataConfig

    keys = {}
    for name, default in (("energy_key", "energy"), ("forces_key", "forces"), ("stress_key", "stress")):
        value = getattr(args, name)
        value = data.get(name, default) if value is None else value
        keys[name] = None if value in (None, "none") else value
    saved = {k: v for k, v in data.items() if k in DataConfig.__dataclass_fields__ and k not in ("cutoff", "max_neighbors")}
    return load_training_graphs(DataConfig(**{**saved, **keys, "path": path}), GraphSpec.of(model), model_dtype(model))


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

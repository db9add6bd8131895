"""``sciml export``: write a model's energy/forces/virial function as an AOTInductor package (.pt2)."""

from __future__ import annotations

from sciml.cli.common import add_command, refuse_overwrite

EXAMPLES = """  sciml export runs/ethanol/best.pt --output ethanol.pt2
  sciml export runs/ethanol/best.pt --output ethanol_f64.pt2 --dtype float64
  sciml predict --checkpoint ethanol.pt2 frames.extxyz       # runs the package, not the Python model
  sciml md ethanol.pt2 molecule.xyz --steps 1000

  The package takes one structure (positions, atomic numbers, cell, edge_index, cell_shifts) with any
  numbers of atoms and edges and returns energy, per-atom energies, forces and virial; the C++ loader
  and LAMMPS (sciml lammps) read it. It runs on the device and torch version it was built with.
"""


def register(sub) -> None:
    parser = add_command(sub, "export", "export a trained energy model as an AOTInductor package (.pt2)", EXAMPLES)
    parser.add_argument("checkpoint", help="model checkpoint (.pt)")
    parser.add_argument("--output", required=True, help="the package to write (.pt2)")
    parser.add_argument("--dtype", choices=("float32", "float64"), help="default: the checkpoint's")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the package will run")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    parser.set_defaults(run=run)


def run(args) -> int:
    import time

    from sciml.deploy.export import export_model, read_metadata

    output = refuse_overwrite(args.output, args.force)
    if output.suffix != ".pt2":
        raise ValueError(f"--output must end in .pt2 (the suffix that tells sciml a package), got {output}")
    start = time.perf_counter()
    export_model(args.checkpoint, output, dtype=args.dtype, device=args.device)
    metadata = read_metadata(output)
    print(f"wrote {output} ({metadata['model']}, cutoff {metadata['cutoff']} Å, {metadata['dtype']}, "
          f"{metadata['device']}, {metadata['forces']} forces) in {time.perf_counter() - start:.0f} s")
    return 0

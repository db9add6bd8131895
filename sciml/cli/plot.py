"""``sciml plot``: parity plots and learning curves as PNG."""

from __future__ import annotations

import json
from pathlib import Path

from sciml.cli.common import add_command, refuse_overwrite

EXAMPLES = """  sciml plot curves runs/ethanol                      # runs/ethanol/learning_curves.png
  sciml plot parity runs/ethanol                      # best.pt on the run's test split -> runs/ethanol/parity.png
  sciml plot parity data.extxyz --checkpoint model.pt --output parity.png
"""


def register(sub) -> None:
    plot = add_command(sub, "plot", "parity plots and learning curves (PNG)", EXAMPLES)
    kinds = plot.add_subparsers(dest="kind", metavar="<kind>", required=True)
    curves = kinds.add_parser("curves", help="learning curves from a run directory's metrics.csv")
    curves.add_argument("run_dir")
    curves.add_argument("--output", help="PNG path (default RUN_DIR/learning_curves.png)")
    curves.add_argument("--force", action="store_true")
    curves.set_defaults(run=_run_curves)
    parity = kinds.add_parser("parity", help="energy and force parity plot of a checkpoint on labelled data")
    parity.add_argument("source", help="a run directory (its best.pt on its test split) or a labelled data file")
    parity.add_argument("--checkpoint", help="model checkpoint (required when SOURCE is a data file)")
    parity.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split of a run directory")
    parity.add_argument("--output", help="PNG path (default RUN_DIR/parity.png or parity.png)")
    parity.add_argument("--energy-key", default="energy")
    parity.add_argument("--forces-key", default="forces")
    parity.add_argument("--force", action="store_true")
    parity.set_defaults(run=_run_parity)
    md = kinds.add_parser("md", help="energy, temperature, pressure and volume against time from a sciml md log")
    md.add_argument("log", help="the log of sciml md (e.g. md.log beside md.extxyz)")
    md.add_argument("--output", help="PNG path (default: the log's path with suffix .png)")
    md.add_argument("--force", action="store_true")
    md.set_defaults(run=_run_md_plot)


def _run_curves(args) -> int:
    from sciml.plots import learning_curves

    output = refuse_overwrite(args.output or Path(args.run_dir) / "learning_curves.png", args.force)
    print(f"wrote {learning_curves(Path(args.run_dir) / 'metrics.csv', output)}")
    return 0


def _run_parity(args) -> int:
    import numpy as np

    from sciml.inference import predict
    from sciml.data.readers import read_structures
    from sciml.plots import parity_plot
    from sciml.inference import load_model

    source = Path(args.source)
    if source.is_dir():
        splits = json.loads((source / "splits.json").read_text())
        data, checkpoint, indices = splits["data_path"], args.checkpoint or source / "best.pt", splits[args.split]
        output = refuse_overwrite(args.output or source / "parity.png", args.force)
    else:
        if not args.checkpoint:
            raise ValueError("--checkpoint is required when SOURCE is a data file")
        data, checkpoint, indices = source, args.checkpoint, None
        output = refuse_overwrite(args.output or "parity.png", args.force)
    structures = read_structures(data, energy_key=args.energy_key, forces_key=args.forces_key, stress_key=None)
    if indices is not None:
        structures = [structures[k] for k in indices]
    model = load_model(checkpoint)
    results = predict(structures, model)
    counts = np.array([len(a) for a in structures])
    energy_ref = np.array([a.get_potential_energy() for a in structures]) / counts
    energy_pred = np.array([r["energy"] for r in results]) / counts
    forces_ref = np.concatenate([a.get_forces() for a in structures])
    forces_pred = np.concatenate([r["forces"] for r in results])
    parity_plot({"energy per atom": (energy_ref, energy_pred), "forces": (forces_ref, forces_pred)}, output,
                {"energy per atom": "eV/atom", "forces": "eV/Å"})
    print(f"wrote {output} ({len(structures)} structures)")
    return 0


def _run_md_plot(args) -> int:
    from sciml.plots import md_plot

    log = Path(args.log)
    if not log.is_file():
        raise FileNotFoundError(f"{log} does not exist")
    output = refuse_overwrite(args.output or log.with_suffix(".png"), args.force)
    print(f"wrote {md_plot(log, output)}")
    return 0

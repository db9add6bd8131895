"""``sciml plot``: parity plots and learning curves as PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

from sciml.cli.common import add_command, graphs_as_trained, refuse_overwrite

EXAMPLES = """  sciml plot curves runs/ethanol                      # runs/ethanol/learning_curves.png
  sciml plot curves runs/ethanol --no-lr --output curves.png
  sciml plot parity runs/ethanol                      # best.pt on the run's test split -> runs/ethanol/parity.png
  sciml plot parity runs/crystals_emt_small --split valid   # a property model: one panel per predicted property
  sciml plot parity data.extxyz --checkpoint model.pt --output parity.png
"""


def register(sub) -> None:
    plot = add_command(sub, "plot", "parity plots and learning curves (PNG)", EXAMPLES)
    kinds = plot.add_subparsers(dest="kind", metavar="<kind>", required=True)
    curves = kinds.add_parser("curves", help="learning curves from a run directory's metrics.csv")
    curves.add_argument("run_dir")
    curves.add_argument("--output", help="PNG path (default RUN_DIR/learning_curves.png)")
    curves.add_argument("--lr", action=argparse.BooleanOptionalAction, default=True,
                        help="a learning-rate panel (default on)")
    curves.add_argument("--force", action="store_true")
    curves.set_defaults(run=_run_curves)
    parity = kinds.add_parser("parity", help="parity plots (energy, forces, stress, properties) of a checkpoint "
                                             "on labelled data")
    parity.add_argument("source", help="a run directory (its best.pt on its test split) or a labelled data file")
    parity.add_argument("--checkpoint", help="model checkpoint (required when SOURCE is a data file)")
    parity.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split of a run directory")
    parity.add_argument("--output", help="PNG path (default RUN_DIR/parity.png or parity.png)")
    parity.add_argument("--energy-key", help="label key of energies (default: as in training; 'none' to ignore)")
    parity.add_argument("--forces-key", help="label key of forces (default: as in training; 'none' to ignore)")
    parity.add_argument("--stress-key", help="label key of stress (default: as in training; 'none' to ignore)")
    parity.add_argument("--batch-size", type=int, default=32)
    parity.add_argument("--force", action="store_true")
    parity.set_defaults(run=_run_parity)
    md = kinds.add_parser("md", help="energy, temperature, pressure and volume against time from a sciml md log")
    md.add_argument("log", help="the log of sciml md (e.g. md.log beside md.extxyz)")
    md.add_argument("--output", help="PNG path (default: the log's path with suffix .png)")
    md.add_argument("--force", action="store_true")
    md.set_defaults(run=_run_md_plot)


def _run_curves(args) -> int:
    from sciml.plots import learning_curves

    run_dir = Path(args.run_dir)
    output = refuse_overwrite(args.output or run_dir / "learning_curves.png", args.force)
    units = _property_units(_run_config(run_dir).get("data", {}))
    title = f"Learning curves: {run_dir.resolve().name}"
    print(f"wrote {learning_curves(run_dir / 'metrics.csv', output, units=units, learning_rate=args.lr, title=title)}")
    return 0


def _run_config(run_dir: Path) -> Dict[str, Any]:
    """The run's resolved configuration (config.yaml), {} when there is none."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _property_units(data: Dict[str, Any]) -> Dict[str, str]:
    """Unit of each property label: data.property_units, else the known benchmark unit."""
    from sciml.models.domain import PROPERTY_UNITS

    units = {key: PROPERTY_UNITS[key] for key in data.get("property_keys") or [] if key in PROPERTY_UNITS}
    units.update(data.get("property_units") or {})
    return units


def parity_inputs(args) -> Tuple[Any, List[Any], Dict[str, Any], Path, str]:
    """The model, the labelled graphs (the run's split, or the data file), the training data
    config, the output path and a description of the data, for ``sciml plot parity``."""
    from sciml.inference import load_model
    from sciml.io import load_checkpoint
    from sciml.data.formats import FIELDS, format_names

    source = Path(args.source)
    if source.is_dir():
        splits = json.loads((source / "splits.json").read_text())
        path = splits.get("files", {}).get(args.split, splits["data_path"])  # the set's own file (data.test, ...)
        checkpoint, indices = args.checkpoint or source / "best.pt", splits[args.split]
        output = refuse_overwrite(args.output or source / "parity.png", args.force)
        described = f"{args.split} split of {path}"
    else:
        if not args.checkpoint:
            raise ValueError("--checkpoint is required when SOURCE is a data file")
        path, checkpoint, indices = source, args.checkpoint, None
        output = refuse_overwrite(args.output or "parity.png", args.force)
        described = str(path)
    model = load_model(checkpoint)
    data = dict(load_checkpoint(checkpoint).get("train_config", {}).get("data", {}))
    if data.get("format") in format_names(FIELDS):
        raise ValueError(f"{checkpoint} is a field model (data.format {data['format']}): parity plots are for "
                         f"atomic structures; see `sciml eval`")
    graphs = graphs_as_trained(args, model, data, path)
    if indices is not None:
        graphs = [graphs[k] for k in indices]
    return model, graphs, data, output, described


def _run_parity(args) -> int:
    from sciml.plots import parity_panels, parity_plot

    model, structures, data, output, described = parity_inputs(args)
    panels = parity_panels(model, structures, args.batch_size, prediction_keys=data.get("prediction_keys") or None,
                           property_units=_property_units(data))
    if not panels:
        raise ValueError(f"nothing to plot: the model predicts none of the labels of {described}")
    for name, stats in parity_plot(panels, output).items():
        unit = f" {stats['unit']}" if stats["unit"] else ""
        print(f"  {name}: MAE {stats['mae']:.4g}{unit}, RMSE {stats['rmse']:.4g}{unit} ({int(stats['count'])} values)")
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

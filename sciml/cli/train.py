"""``sciml train`` and ``sciml eval``."""

from __future__ import annotations

from sciml.cli.common import add_command

TRAIN_EXAMPLES = """  sciml train workflows/ethanol/egnn.yaml
  sciml train config.yaml --output-dir runs/try2 --epochs 50 --set optimizer.lr=5e-4 loss.forces=10
  sciml train config.yaml --output-dir runs/try2 --resume      # continue from runs/try2/last.pt
"""
EVAL_EXAMPLES = """  sciml eval --checkpoint runs/ethanol/best.pt datasets/ethanol_xtb_500K/ethanol_xtb_500K.extxyz
  sciml eval --checkpoint model.pt test.extxyz --energy-key REF_energy --forces-key REF_forces
"""

# CLI flags that are shortcuts for YAML keys (every other key via --set key=value).
_SHORTCUTS = {
    "epochs": "epochs", "batch_size": "batch_size", "output_dir": "output_dir", "seed": "seed",
    "device": "device", "lr": "optimizer.lr", "data": "data.path",
}


def register(sub) -> None:
    train = add_command(sub, "train", "train a model from a YAML config", TRAIN_EXAMPLES)
    train.add_argument("config", help="YAML config (see workflows/ for examples)")
    train.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override any config key, dotted (e.g. optimizer.lr=1e-3)")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    for flag, key in _SHORTCUTS.items():
        kind = float if flag == "lr" else int if flag in ("epochs", "batch_size", "seed") else str
        train.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=f"same as --set {key}=...")
    train.set_defaults(run=run_train)

    evaluate = add_command(sub, "eval", "evaluate a checkpoint on a labelled data file", EVAL_EXAMPLES)
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("data", help="labelled structures (extxyz, ase db, ...)")
    evaluate.add_argument("--energy-key", default="energy")
    evaluate.add_argument("--forces-key", default="forces")
    evaluate.add_argument("--stress-key", default="stress")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(run=run_eval)


def run_train(args) -> int:
    from sciml.train import load_config, train

    overrides = list(args.set)
    for flag, key in _SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(args.config, overrides)
    result = train(config, resume=args.resume)
    print(result.summary())
    return 0


def run_eval(args) -> int:
    from sciml.data.readers import load_graph_dataset
    from sciml.inference import load_model
    from sciml.train import evaluate, format_metrics

    model = load_model(args.checkpoint, device=args.device)
    graphs = load_graph_dataset(
        args.data, cutoff=model.cutoff, max_neighbors=model.max_neighbors,
        energy_key=args.energy_key, forces_key=args.forces_key, stress_key=args.stress_key,
    )
    metrics = evaluate(model, graphs, batch_size=args.batch_size, device=args.device)
    print(format_metrics(metrics, title=f"{args.checkpoint} on {args.data} ({len(graphs)} structures)"))
    return 0

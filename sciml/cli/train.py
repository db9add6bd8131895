"""``sciml train`` and ``sciml eval``."""

from __future__ import annotations

import sys
from typing import List, Optional, Tuple

from sciml.cli.common import add_command, add_domain_option, add_runtime_options, graphs_as_trained, print_runtime

TRAIN_EXAMPLES = """  sciml train workflows/ethanol/egnn.yaml
  sciml train config.yaml --output-dir runs/try2 --epochs 50 --set optimizer.lr=5e-4 loss.forces=10
  sciml train config.yaml --output-dir runs/try2 --resume      # continue from the newest checkpoint
  sciml train config.yaml --resume auto --set checkpoint_every=500 amp=bf16   # job scripts: resume if possible
  sciml train config.yaml --output-dir runs/more --resume runs/try2/last.pt   # continue that run in a new folder
  sciml train finetune.yaml --init-from runs/try2/best.pt      # fine-tune: a new run from its weights, new data
  torchrun --standalone --nproc-per-node 4 --no-python sciml train config.yaml --resume auto   # data-parallel
"""
EVAL_EXAMPLES = """  sciml eval --checkpoint runs/ethanol/best.pt datasets/ethanol_xtb_500K/ethanol_xtb_500K.extxyz
  sciml eval --checkpoint runs/nbody_egnn/best.pt datasets/nbody/nbody_small.extxyz   # keys from training
  sciml eval --checkpoint model.pt test.extxyz --energy-key REF_energy --forces-key REF_forces
  sciml eval --task s2ef --checkpoint eq2_31M_ec4_allmd.pt s2ef_val_id/        # OC20 metrics; fairchem checkpoints work
  sciml eval --task is2re --checkpoint runs/oc20/best.pt is2re_val.lmdb --optimizer lbfgs --fmax 0.05 --steps 200
"""

# CLI flags that are shortcuts for YAML keys (every other key via --set key=value).
_SHORTCUTS = {
    "epochs": "epochs", "batch_size": "batch_size", "output_dir": "output_dir", "seed": "seed",
    "device": "device", "lr": "optimizer.lr", "data": "data.path", "init_from": "init_from",
}


def register(sub) -> None:
    train = add_command(sub, "train", "train a model from a YAML config", TRAIN_EXAMPLES)
    # config is optional to argparse: `--set a=1 config.yaml` hands the path to --set, and
    # _config_and_overrides takes it back (see there)
    train.add_argument("config", nargs="?", help="YAML config (see workflows/ for examples)")
    train.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                       help="override any config key, dotted (e.g. optimizer.lr=1e-3); repeatable, "
                            "several after one --set; before or after the config file")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="auto|CHECKPOINT",
                       help="continue the run in OUTPUT_DIR from its newest valid checkpoint; 'auto': the same, "
                            "or a new run when OUTPUT_DIR has none (for job scripts and requeued jobs); "
                            "CHECKPOINT: from that file of this run (same config; into a new OUTPUT_DIR too, "
                            "with the split of the checkpoint's run folder). New data or settings: --init-from")
    for flag, key in _SHORTCUTS.items():
        kind = float if flag == "lr" else int if flag in ("epochs", "batch_size", "seed") else str
        metavar = {"init_from": "CHECKPOINT"}.get(flag)
        extra = {"init_from": ": fine-tune, a new run from the weights of a sciml or fairchem checkpoint "
                              "(see sciml.train.finetune)"}.get(flag, "")
        train.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, metavar=metavar,
                           help=f"same as --set {key}=...{extra}")
    train.set_defaults(run=run_train)

    evaluate = add_command(sub, "eval", "evaluate a checkpoint on a labelled data file", EVAL_EXAMPLES)
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("data", help="labelled structures (extxyz, ase db, ...)")
    # Label keys default to those the checkpoint was trained with (its stored training config).
    evaluate.add_argument("--energy-key", help="label key of energies ('none' to ignore)")
    evaluate.add_argument("--forces-key", help="label key of forces ('none' to ignore)")
    evaluate.add_argument("--stress-key", help="label key of stress ('none' to ignore)")
    evaluate.add_argument("--batch-size", type=int, default=32)
    add_runtime_options(evaluate, "the checkpoint's")
    add_domain_option(evaluate)
    evaluate.add_argument("--task", choices=("labels", "s2ef", "is2re"), default="labels",
                          help="labels: errors on the file's labels (default); s2ef: OC20 S2EF metrics; "
                               "is2re: relax initial structures, OC20 IS2RE/IS2RS metrics (OC20 data formats)")
    evaluate.add_argument("--optimizer", choices=("lbfgs", "bfgs", "fire"), default="lbfgs", help="is2re optimizer")
    evaluate.add_argument("--fmax", type=float, default=0.05, help="is2re convergence, eV/Å (default 0.05)")
    evaluate.add_argument("--steps", type=int, default=200, help="is2re maximum steps (default 200)")
    evaluate.set_defaults(run=run_eval)


def run_train(args) -> int:
    from sciml.distributed import is_main_process, teardown
    from sciml.train import load_config, train
    from sciml.train.signals import TrainingInterrupted

    path, overrides = _config_and_overrides(args.config, args.set)
    for flag, key in _SHORTCUTS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = load_config(path, overrides)
    try:
        result = train(config, resume=args.resume)
        if is_main_process():
            print(result.summary())
    except TrainingInterrupted as stop:
        print(f"sciml train: {stop}", file=sys.stderr)
        return stop.exit_code
    finally:
        teardown()
    return 0


def _config_and_overrides(config: Optional[str], values: List[str]) -> Tuple[str, List[str]]:
    """The config path and the KEY=VALUE overrides of ``sciml train``.

    ``--set`` takes one or more values, so in ``sciml train --set a=1 config.yaml`` argparse
    gives it the config path too: a value without ``=`` is the config file when none was given
    in its place.

    Raises:
        ValueError: no config file, two of them, or a --set value without ``=`` besides the config.
    """
    plain = [value for value in values if "=" not in value]
    overrides = [value for value in values if "=" in value]
    if config is None and len(plain) == 1:
        return plain[0], overrides
    if plain:
        raise ValueError(f"--set takes KEY=VALUE, got {' '.join(plain)!r}"
                         + (f" besides the config file {config}" if config else ""))
    if config is None:
        raise ValueError("missing the YAML config: sciml train CONFIG [--set KEY=VALUE ...]")
    return config, overrides


def run_eval(args) -> int:
    from sciml.devices import resolve_device
    from sciml.data.formats import FIELDS, format_names
    from sciml.inference import load_model, model_dtype
    from sciml.io import load_checkpoint
    from sciml.train import evaluate, format_metrics

    args.device = resolve_device(args.device)
    model = load_model(args.checkpoint, device=args.device, dtype=args.dtype)
    print_runtime(args.device, model_dtype(model))
    if args.task != "labels":
        return _run_oc20_eval(args, model)
    train_config = load_checkpoint(args.checkpoint).get("train_config", {})
    data = train_config.get("data", {})
    if data.get("format") in format_names(FIELDS):
        return _run_field_eval(args, model, train_config)
    graphs = graphs_as_trained(args, model, data, args.data)
    check_domain(model, graphs, args)
    metrics = evaluate(model, graphs, batch_size=args.batch_size, device=args.device,
                       prediction_keys=data.get("prediction_keys") or None)
    print(format_metrics(metrics, title=f"{args.checkpoint} on {args.data} ({len(graphs)} structures)"))
    return 0


def _run_field_eval(args, model, train_config: dict) -> int:
    """Relative L2 errors of a neural operator on a field file, read as in training."""
    from sciml.inference import model_dtype
    from sciml.train import format_metrics
    from sciml.train.config import TrainConfig
    from sciml.train.fields import FieldProblem

    config = TrainConfig.from_dict({**train_config, "data": {**train_config["data"], "path": args.data}})
    problem = FieldProblem(config, model, model_dtype(model))
    samples = problem.load()
    metrics = problem.evaluate(samples, args.batch_size, args.device, with_loss=False)
    print(format_metrics(metrics, title=f"{args.checkpoint} on {args.data} ({len(samples)} trajectories)"))
    return 0


def _run_oc20_eval(args, model) -> int:
    from sciml.data.oc20 import load_graphs
    from sciml.graph import GraphSpec
    from sciml.inference import model_dtype
    from sciml.tasks.oc20 import evaluate_is2re, evaluate_s2ef
    from sciml.train import format_metrics

    graphs = load_graphs(args.data, cutoff=GraphSpec.of(model), dtype=model_dtype(model))  # fairchem's cap rule too
    check_domain(model, graphs, args)
    if args.task == "s2ef":
        metrics = evaluate_s2ef(model, graphs, batch_size=args.batch_size, device=args.device)
    else:
        metrics = evaluate_is2re(model, graphs, args.fmax, args.steps, args.optimizer, args.device)
    print(format_metrics(metrics, title=f"OC20 {args.task.upper()}: {args.checkpoint} on {args.data} ({len(graphs)} structures)"))
    return 0


def check_domain(model, graphs, args) -> None:
    """Refuse ``args.data`` if a structure has elements outside the model's domain (one line
    naming the first such structure), unless ``--allow-unknown-elements``."""
    domain = model.domain
    if domain is None:
        return
    for number, graph in enumerate(graphs):
        if domain.unknown_elements(graph.atomic_numbers.tolist()):
            domain.check_elements(graph.atomic_numbers.tolist(), f"{args.data}: structure {number}",
                                  allow=args.allow_unknown_elements)
            return

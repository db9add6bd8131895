"""Evaluate a checkpoint of an n-body run on its test split (e.g. a run stopped before its end).

``sciml train`` writes ``test_metrics.json`` when it finishes; this script gives the same numbers
for ``best.pt`` (or any checkpoint) of a run that was stopped early, together with the
constant-position baseline (predict x(t + 1000 steps) = x(t))::

    python workflows/nbody/evaluate.py runs/nbody_egnn [--checkpoint best.pt] [--split test]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sciml.data.readers import load_graph_dataset
from sciml.io.checkpoint import load_checkpoint
from sciml.train import evaluate, format_metrics, load_config, load_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="output directory of the training run")
    parser.add_argument("--checkpoint", default="best.pt")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    args = parser.parse_args(argv)
    config = load_config(args.run / "config.yaml")
    data = config.data
    model = load_model(args.run / args.checkpoint)
    dtype = next(model.parameters()).dtype
    cutoff = data.cutoff if data.cutoff is not None else model.cutoff
    indices = json.loads((args.run / "splits.json").read_text())[args.split]
    graphs = load_graph_dataset(data.path, cutoff, data.max_neighbors, data.energy_key, data.forces_key,
                                data.stress_key, data.property_keys, dtype=dtype)
    graphs = [graphs[i] for i in indices]
    metrics = evaluate(model, graphs, 500, prediction_keys=data.prediction_keys)
    for label, predicted in data.prediction_keys.items():
        if predicted == "positions":
            error = torch.cat([g.atom_properties[label] - g.positions for g in graphs]).double()
            metrics[f"constant_position_{label}_mse"] = float(error.square().mean())
    epoch = load_checkpoint(args.run / args.checkpoint)["epoch"]
    print(format_metrics({"epoch": epoch, **metrics}, f"{args.run / args.checkpoint} on the {args.split} split:"))


if __name__ == "__main__":
    main()

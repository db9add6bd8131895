"""Train a config on all five MatBench folds and report MatBench's score: the mean and standard
deviation of the five test MAEs.

    python workflows/crystals/matbench.py workflows/crystals/matbench_mp_e_form.yaml [--folds 0 1 2 3 4]
        [--set KEY=VALUE ...]

Fold k trains with ``split.method=matbench split.fold=k`` into ``<output_dir>/fold_<k>``; a fold
whose run finished already (``test_metrics.json`` exists) is not trained again. The scores go to
``<output_dir>/matbench_scores.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from sciml.train import load_config, train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    base = load_config(args.config, args.overrides)
    (target,) = base.data.property_keys
    root = Path(base.output_dir)
    maes = {}
    for fold in args.folds:
        folder = root / f"fold_{fold}"
        metrics_file = folder / "test_metrics.json"
        if not metrics_file.is_file():
            config = load_config(args.config, args.overrides + [
                "split.method=matbench", f"split.fold={fold}", f"output_dir={folder}"])
            train(config)
        maes[fold] = json.loads(metrics_file.read_text())["model"][f"{target}_mae"]
        print(f"fold {fold}: test MAE {maes[fold]:.6g}")
    values = list(maes.values())
    scores = {"target": target, "fold_mae": maes, "mean_mae": statistics.fmean(values),
              "std_mae": statistics.pstdev(values) if len(values) > 1 else 0.0}
    (root / "matbench_scores.json").write_text(json.dumps(scores, indent=1))
    print(f"MatBench {target}: MAE {scores['mean_mae']:.6g} +- {scores['std_mae']:.2g} over folds {args.folds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

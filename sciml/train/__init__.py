"""Training, evaluating and loading sciml graph models (the library behind ``sciml train``)."""

from sciml.inference import load_model, predict_batches
from sciml.train.config import TrainConfig, apply_overrides, load_config
from sciml.train.evaluation import evaluate, format_metrics, mean_baseline_metrics
from sciml.train.atomistic import fit_statistics
from sciml.train.trainer import Trainer, TrainResult, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_overrides",
    "evaluate",
    "fit_statistics",
    "format_metrics",
    "load_config",
    "load_model",
    "mean_baseline_metrics",
    "predict_batches",
    "train",
]

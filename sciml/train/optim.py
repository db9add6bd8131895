"""Optimizer construction, the learning-rate schedule and the moving average of weights.

Both stateful helpers can be saved (plain values and tensors) and restored, so a resumed run
continues with exactly the state it stopped with.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Dict, Iterator

import torch

from sciml.train.config import OptimizerConfig, SchedulerConfig

_COSINE_FLOOR = 0.01  # cosine ends at 1% of the peak learning rate
_ONECYCLE_START, _ONECYCLE_END = 1 / 25, 1e-4  # as torch's OneCycleLR defaults
_ONECYCLE_RISE = 0.3
_PLATEAU_THRESHOLD = 1e-4  # relative improvement that counts, as torch's ReduceLROnPlateau


def build_optimizer(model: torch.nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over all trainable parameters."""
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.name]
    return kind([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)


class LearningRateSchedule:
    """Sets each parameter group's learning rate to ``base_lr * factor`` before every step.

    The factor rises linearly over the warm-up steps, then follows the configured schedule
    (see :class:`~sciml.train.config.SchedulerConfig`); the plateau rule acts once per epoch.
    Call :meth:`apply` before each optimizer step and :meth:`end_epoch` after validation.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: SchedulerConfig, steps_per_epoch: int, epochs: int):
        self.optimizer = optimizer
        self.name = config.name
        self.total_steps = max(1, steps_per_epoch * epochs)
        warmup = config.warmup_epochs * steps_per_epoch
        if self.name == "onecycle" and warmup == 0:
            warmup = int(_ONECYCLE_RISE * self.total_steps)
        self.warmup_steps = min(warmup, self.total_steps)
        # like torch's schedulers, remember the peak rate in the group (it survives a resume)
        self.base_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.factor, self.patience = config.factor, config.patience
        self.step = 0
        self.plateau_scale = 1.0
        self.plateau_best = math.inf
        self.plateau_bad_epochs = 0

    def current_factor(self) -> float:
        """Learning-rate multiplier for the next optimizer step."""
        step, warmup, total = self.step, self.warmup_steps, self.total_steps
        if step < warmup:
            progress = (step + 1) / warmup
            if self.name == "onecycle":
                return _ONECYCLE_START + (1 - _ONECYCLE_START) * 0.5 * (1 - math.cos(math.pi * progress))
            return progress
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        if self.name == "cosine":
            return _COSINE_FLOOR + (1 - _COSINE_FLOOR) * cosine
        if self.name == "onecycle":
            return _ONECYCLE_END + (1 - _ONECYCLE_END) * cosine
        return self.plateau_scale if self.name == "plateau" else 1.0

    def apply(self) -> float:
        """Set the learning rates for the next step, count the step; returns the first group's."""
        factor = self.current_factor()
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.step += 1
        return self.base_lrs[0] * factor

    def end_epoch(self, valid_loss: float) -> None:
        """Plateau rule: scale down after ``patience`` epochs without relative improvement."""
        if self.name != "plateau":
            return
        if valid_loss < self.plateau_best * (1 - _PLATEAU_THRESHOLD):
            self.plateau_best, self.plateau_bad_epochs = valid_loss, 0
        else:
            self.plateau_bad_epochs += 1
            if self.plateau_bad_epochs > self.patience:
                self.plateau_scale *= self.factor
                self.plateau_bad_epochs = 0

    def state_dict(self) -> Dict[str, Any]:
        return {"step": self.step, "plateau_scale": self.plateau_scale, "plateau_best": self.plateau_best,
                "plateau_bad_epochs": self.plateau_bad_epochs}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.plateau_scale = float(state["plateau_scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad_epochs = int(state["plateau_bad_epochs"])


class ExponentialMovingAverage:
    """``average <- d * average + (1 - d) * weights`` after every optimizer step.

    ``d = min(decay, (1 + n) / (10 + n))`` after n updates, so the average forgets the random
    initial weights within the first steps (as TensorFlow's ``num_updates`` option). Averages
    every floating-point entry of the state dict (parameters and buffers); integer buffers are
    taken from the model as they are.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, value in model.state_dict().items():
            if name in self.average:
                self.average[name].lerp_(value, 1 - decay)

    def averaged_state_dict(self, model: torch.nn.Module) -> Dict[str, torch.Tensor]:
        """The model's state dict with the averaged values substituted (what inference uses)."""
        return {k: self.average.get(k, v).detach().clone() for k, v in model.state_dict().items()}

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into ``model`` (e.g. for validation)."""
        current = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.averaged_state_dict(model))
        try:
            yield
        finally:
            model.load_state_dict(current)

    def load_state_dict(self, averaged_state_dict: Dict[str, torch.Tensor], num_updates: int) -> None:
        """Restore from :meth:`averaged_state_dict` and the number of updates it had seen."""
        self.num_updates = int(num_updates)
        for name, value in self.average.items():
            value.copy_(averaged_state_dict[name])

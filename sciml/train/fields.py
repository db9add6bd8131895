"""Training neural operators on time-dependent 2D fields (Navier-Stokes vorticity, PDEBench), for
:class:`~sciml.train.trainer.Trainer`.

A sample is one trajectory (X, Y, T) from an FNO ``.mat`` file (``data.format: fno_mat``, variable
``fields.key``) or a PDEBench HDF5 file (``data.format: pdebench``, ``fields.kind`` and
``fields.channel``). The model sees the first ``fields.t_in`` steps and predicts the next
``fields.steps``:

- 2D models ((B, X, Y, t_in) -> (B, X, Y, t_out)) roll out autoregressively; with
  ``fields.teacher_forcing`` training feeds the true previous steps instead of the predictions
  (evaluation always rolls out freely);
- 3D models (``model.space_time``: (B, X, Y, T, C_in) -> (B, X, Y, T, C_out)) predict all steps
  at once from the input steps given as channels at every time.

The loss is FNO's relative L2 error over the predicted steps. Test metrics add the error on the
test set transformed by each of ``fields.transforms`` (a model equivariant to the transform
scores the same) and on the extra test files of ``fields.extra_test`` (e.g. a higher resolution:
neural operators evaluate at any resolution). The baseline repeats the last known step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from sciml.data.formats import get_format
from sciml.distributed import DistributedContext
from sciml.tasks.pde import check_transforms, relative_l2, rollout, transformed_errors
from sciml.train.compile import compile_model
from sciml.train.config import TrainConfig

@dataclass
class FieldBatch:
    """Trajectories (B, X, Y, T)."""

    fields: torch.Tensor

    def to(self, device) -> "FieldBatch":
        return FieldBatch(self.fields.to(device))


class FieldProblem:
    """Neural-operator training on trajectories (see the module docstring)."""

    count_key = "num_samples"

    def __init__(self, config: TrainConfig, model: torch.nn.Module, dtype: torch.dtype):
        self.config, self.model, self.dtype = config, model, dtype
        self.options = config.fields
        check_transforms(self.options.transforms, "fields.transforms")

    def _read(self, path: str) -> torch.Tensor:
        options = self.options
        reader = get_format(self.config.data.format).read  # a format of kind fields: (N, X, Y, T)
        fields = torch.as_tensor(reader(path, options.key, options.kind, options.channel)).to(self.dtype)
        needed = options.t_in + options.steps
        if fields.shape[-1] < needed:
            raise ValueError(f"{path}: trajectories have {fields.shape[-1]} steps, fewer than fields.t_in + fields.steps "
                             f"= {needed}")
        return fields[..., :needed]

    def load(self) -> List[torch.Tensor]:
        """One (X, Y, t_in + steps) trajectory per sample of ``data.path``."""
        return list(self._read(self.config.data.path))

    def fit(self, train: Sequence[torch.Tensor]) -> Dict[str, float]:
        return {"t_in": self.options.t_in, "steps": self.options.steps}

    @staticmethod
    def domain() -> None:
        """None: a neural operator's inputs are fields on its grid, with no element domain."""
        return None

    @staticmethod
    def sizes(train: Sequence[torch.Tensor]) -> None:
        """None: every sample costs the same (batches are balanced by count)."""
        return None

    @staticmethod
    def collate(samples: Sequence[torch.Tensor]) -> FieldBatch:
        return FieldBatch(torch.stack(list(samples)))

    def predict(self, fields: torch.Tensor, teacher_forcing: bool = False) -> torch.Tensor:
        """Predicted steps (B, X, Y, steps) from the first t_in steps of ``fields``."""
        t_in, steps = self.options.t_in, self.options.steps
        known = fields[..., :t_in]
        if self.model.space_time:
            inputs = known[:, :, :, None, :].expand(-1, -1, -1, steps, -1)  # (B, X, Y, steps, t_in)
            return self.model(inputs)[..., 0]
        truth = fields[..., t_in:t_in + steps] if teacher_forcing else None
        return rollout(self.model, known, steps, truth)

    def outputs(self, batch: FieldBatch) -> Dict[str, torch.Tensor]:
        return {"fields": self.predict(batch.fields, self.options.teacher_forcing and self.model.training)}

    def compile(self, backend: str) -> None:
        """Compile the model's forward (rollouts and validation run the compiled model)."""
        compile_model(self.model, backend)

    def loss(self, batch: FieldBatch, out: Dict[str, torch.Tensor]) -> torch.Tensor:
        return relative_l2(out["fields"], batch.fields[..., self.options.t_in:])

    def evaluate(self, samples: Sequence[torch.Tensor], batch_size: int, device, with_loss: bool,
                 context: Optional[DistributedContext] = None) -> Dict[str, float]:
        """``rel_l2`` (and ``loss``, the same) on the samples; without ``with_loss`` (the test set)
        also ``rel_l2_<transform>`` for each of ``fields.transforms`` and ``rel_l2_<name>`` for
        each file of ``fields.extra_test``. With a data-parallel ``context`` each rank rolls out
        every ``world_size``-th trajectory and the errors are combined: every rank returns the
        metrics of the whole set."""
        fields = torch.stack(list(samples))
        transforms = ["identity"] + ([t for t in self.options.transforms if t != "identity"] if not with_loss else [])
        errors = self._errors(fields, transforms, batch_size, device, context)
        metrics = {self.count_key: float(len(samples)), "rel_l2": errors.pop("identity")}
        if with_loss:
            metrics["loss"] = metrics["rel_l2"]
            return metrics
        metrics.update({f"rel_l2_{name}": error for name, error in errors.items()})
        for name, path in self.options.extra_test.items():
            metrics[f"rel_l2_{name}"] = self._errors(self._read(path), ["identity"], batch_size, device, context)["identity"]
        return metrics

    def _errors(self, fields: torch.Tensor, transforms: Sequence[str], batch_size: int, device,
                context: Optional[DistributedContext] = None) -> Dict[str, float]:
        """:func:`~sciml.tasks.pde.transformed_errors` of the model in eval mode (free rollouts);
        with a data-parallel ``context`` over this rank's share of the trajectories, combined into
        the means over all of them."""
        ranks, rank = (context.world_size, context.rank) if context is not None and context.enabled else (1, 0)
        shard = fields[rank::ranks]
        was_training = self.model.training
        self.model.eval()
        try:
            errors = {}
            if len(shard):
                errors = transformed_errors(self.predict, shard, self.options.t_in, transforms, batch_size, device)
        finally:
            self.model.train(was_training)
        if ranks == 1:
            return errors
        parts = [(part, count) for part, count in context.all_gather((errors, len(shard))) if count]
        return {name: sum(part[name] * count for part, count in parts) / len(fields) for name in transforms}

    def baselines(self, train: Sequence[torch.Tensor], test: Sequence[torch.Tensor]) -> Dict[str, float]:
        """The relative L2 error of repeating the last known step."""
        fields = torch.stack(list(test))
        t_in = self.options.t_in
        persistence = fields[..., t_in - 1:t_in].expand_as(fields[..., t_in:])
        return {"persistence_rel_l2": float(relative_l2(persistence, fields[..., t_in:]))}

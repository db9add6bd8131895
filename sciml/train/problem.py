"""What the trainer needs to know about one kind of data: a ``Problem``.

The :class:`~sciml.train.trainer.Trainer` owns the loop, the optimizer and schedule, EMA,
checkpoints, splits, logs and resuming; a problem owns everything that depends on the data:

- ``load() -> list``: the samples of ``data.path``, in file order (split by the trainer);
- ``fit(train) -> dict``: training statistics, given to the model (e.g. energy-head references,
  label standardisation), saved in checkpoints;
- ``domain() -> dict | None``: after ``fit``, what the model has seen (elements, periodic cells,
  labels and their ranges; :class:`~sciml.models.domain.ModelDomain`), saved in checkpoints;
- ``sizes(train)``: the cost of each sample (atoms) to balance batches and ranks by, or None;
- ``collate(samples)``: one batch (an object with ``.to(device)``);
- ``outputs(batch) -> dict`` and ``loss(batch, outputs) -> scalar tensor``;
- ``compile(backend)``: run ``outputs`` through ``torch.compile`` from now on (``config.compile``,
  see :mod:`sciml.train.compile`);
- ``evaluate(samples, batch_size, device, with_loss, context) -> dict`` of metrics (of the whole set on every rank of a data-parallel ``context``, each evaluating a shard), with ``loss`` when
  asked and the sample count under ``count_key``;
- ``baselines(train, test) -> dict``: trivial predictors' metrics on the test set.

:class:`~sciml.train.atomistic.AtomisticProblem` trains graph models on atomic structures
(energy, forces, stress, properties); :class:`~sciml.train.fields.FieldProblem` trains neural
operators on time-dependent fields (a ``data.format`` of kind ``fields``, :mod:`sciml.data.formats`).
"""

from __future__ import annotations

import torch

from sciml.train.config import TrainConfig


def make_problem(config: TrainConfig, model: torch.nn.Module, dtype: torch.dtype):
    """The problem for ``config``'s data and ``model``."""
    from sciml.data.formats import FIELDS, get_format
    from sciml.train.atomistic import AtomisticProblem
    from sciml.train.fields import FieldProblem

    if config.data.format is not None and get_format(config.data.format).kind == FIELDS:
        return FieldProblem(config, model, dtype)
    return AtomisticProblem(config, model, dtype)

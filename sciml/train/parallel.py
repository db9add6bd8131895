"""Data-parallel training without a model wrapper: parameters start equal on every rank and
gradients are averaged over ranks before each optimizer step.

One flattened all-reduce per step (gradients and a "has a gradient" flag per parameter) keeps
unused parameters unused on every rank, as in a one-process run, and works with models that
differentiate their energy for forces inside the loss (double backward), where hooks on
``.grad`` would fire early. Batch-norm statistics follow rank 0 after every step, as
``DistributedDataParallel(broadcast_buffers=True)``.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.distributed as dist
from torch import nn

from sciml.distributed import DistributedContext


def broadcast_parameters(model: nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not context.enabled:
        return
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(model: nn.Module, context: DistributedContext, extra: Sequence[float] = ()) -> List[float]:
    """Replace every gradient by its mean over the ranks (a gradient missing on a rank counts
    as zero; a parameter without a gradient on every rank keeps ``grad`` None). ``extra`` values
    (e.g. a stop flag) travel in the same all-reduce; returns their sums over the ranks."""
    parameters: List[nn.Parameter] = [p for p in model.parameters() if p.requires_grad]
    if not context.enabled or not parameters:
        return context.all_reduce_sum(extra) if extra else []
    reference = parameters[0]
    flags = [float(p.grad is not None) for p in parameters] + [float(v) for v in extra]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(reference.dtype)
                      for p in parameters]
                     + [torch.tensor(flags, dtype=torch.float64).to(reference.dtype).to(reference.device)])
    dist.all_reduce(flat)
    sums = flat[len(flat) - len(extra):].tolist() if extra else []
    flat /= context.world_size
    offset = 0
    present = flat[len(flat) - len(flags):len(flat) - len(extra)] > 0
    for parameter, has_gradient in zip(parameters, present.tolist()):
        size = parameter.numel()
        if has_gradient:
            averaged = flat[offset:offset + size].view_as(parameter).to(parameter.dtype)
            if parameter.grad is None:
                parameter.grad = averaged.clone()
            else:
                parameter.grad.copy_(averaged)
        offset += size
    return sums


def broadcast_running_statistics(model: nn.Module, context: DistributedContext) -> None:
    """Rank 0's batch-norm running statistics on every rank (call after an optimizer step)."""
    if not context.enabled:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)

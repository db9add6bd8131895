"""Activation checkpointing: the trainer's switch to trade compute for memory (``torch.compile`` is
:mod:`sciml.train.compile`)."""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute the activations of every block in the backward pass instead of storing them.

    The blocks are the entries of the model's top-level ``nn.ModuleList`` s (EGNN's ``layers``,
    EquiformerV2's ``blocks``, ComFormer's ``att_layers``, G-FNO's ``blocks``); each one's forward
    runs under non-reentrant :func:`torch.utils.checkpoint.checkpoint` while the model trains, so
    gradients (also of forces, which differentiate the energy twice) are unchanged. Returns the
    number of blocks wrapped.

    Raises:
        ValueError: the model has no top-level ``nn.ModuleList`` of blocks.
    """
    blocks = [block for child in model.children() if isinstance(child, nn.ModuleList) for block in child]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no list of blocks to checkpoint (activation_checkpointing)")
    for block in blocks:
        block.forward = _checkpointed(block, block.forward)
    return len(blocks)


def _checkpointed(block: nn.Module, forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not (block.training and torch.is_grad_enabled()):
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run

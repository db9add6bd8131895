"""TorchScript tracing (``torch.jit.trace``) of sciml's e3nn drop-ins, for e3nn code that compiles
its models with ``e3nn.util.jit.compile``.

A traced call of a drop-in module is recorded as one operator, ``sciml::call_module(inputs,
handle, method)``, that runs the module's eager method: the batch dimensions stay dynamic (the
trace sees no shapes), the kernels and their checks are the eager ones, and gradients of any
order come from re-running the method under autograd. The handle names the live module, so a
traced (or ``torch.jit.save``d and re-loaded) TorchScript module works in the process that traced
it; it cannot run where that module does not exist (another process, C++ without Python).
"""

from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

_MODULES: Dict[int, nn.Module] = {}  # handle (the module's id) -> module, kept alive for the traces naming it


def _module(handle: int) -> nn.Module:
    if handle not in _MODULES:
        raise RuntimeError(
            f"this TorchScript code calls sciml module #{handle}, which exists only in the process that traced it; "
            "trace it again here"
        )
    return _MODULES[handle]


@torch.library.custom_op("sciml::call_module", mutates_args=())
def call_module(inputs: List[torch.Tensor], handle: int, method: str) -> torch.Tensor:
    """``module.<method>(*inputs)`` of the registered module, eagerly."""
    with torch.no_grad():
        return getattr(_module(handle), method)(*inputs).clone()


def _setup(ctx, inputs, output) -> None:
    tensors, handle, method = inputs
    ctx.handle, ctx.method = handle, method
    ctx.save_for_backward(*tensors)


def _backward(ctx, grad: torch.Tensor):
    tensors = ctx.saved_tensors
    wanted = [t for t in tensors if t.requires_grad]
    if not wanted:
        return [None] * len(tensors), None, None
    with torch.enable_grad():  # the saved inputs keep their history: a double backward reaches them
        out = getattr(_module(ctx.handle), ctx.method)(*tensors)
        grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True, create_graph=torch.is_grad_enabled()))
    return [next(grads) if t.requires_grad else None for t in tensors], None, None


torch.library.register_autograd("sciml::call_module", _backward, setup_context=_setup)


def traced_call(module: nn.Module, method: str, *inputs) -> torch.Tensor:
    """Record ``module.<method>(*inputs)`` (trailing None arguments dropped) in the running
    ``torch.jit.trace`` as one ``sciml::call_module`` operator. ``method`` names the module's eager
    implementation, which must not call back into ``traced_call``."""
    handle = id(module)
    _MODULES[handle] = module
    given = list(inputs)
    while given and given[-1] is None:
        given.pop()
    if any(t is None for t in given):
        raise ValueError(f"{type(module).__name__}.{method}: only trailing arguments may be None while traced")
    return torch.ops.sciml.call_module(given, handle, method)

"""What the kernels do differently while a model is traced (compile, make_fx, export).

:func:`is_tracing` tells checks that read tensor values (host synchronisations, data-dependent
branches) to step aside: traced code has no values to read.

Constant tensors of the kernels (coefficients, index tables) are built outside any tracing.

The kernels cache tensors derived from their static setup (recurrence constants, Clebsch-Gordan
tables, column permutations). When the first call happens while a model is traced
(``torch.compile``, ``make_fx``, ``torch.export``), a tensor built there would be a fake or proxy
tensor and poison the cache for every later eager call. Builders decorated with
:func:`built_outside_tracing` run with the tracing modes suspended, so they always return real
tensors, which traced graphs take as constants.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.utils._python_dispatch import _disable_current_modes

F = TypeVar("F", bound=Callable)


def built_outside_tracing(function: F) -> F:
    """Run ``function`` with fake-tensor, proxy and torch-function modes and ``torch.func``
    transforms suspended (real tensors out); under dynamo, as a constant of the graph."""

    # under dynamo the builder runs eagerly and its result is a constant of the graph (its
    # numpy code must not be traced, and a cache filled while tracing would hold graph values)
    constant = torch.compiler.assume_constant_result(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            if any(isinstance(arg, torch.SymInt) for arg in args):
                return function(*args, **kwargs)  # symbolic sizes are not constants: dynamo traces it
            return constant(*args, **kwargs)
        if not modes_active():
            return function(*args, **kwargs)
        with temporarily_clear_interpreter_stack(), _disable_current_modes(), torch._C.DisableTorchFunction():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def modes_active() -> bool:
    """Whether any dispatch or torch-function mode or ``torch.func`` transform is active (cheap)."""
    return (torch._C._len_torch_dispatch_stack() > 0 or torch._C._is_torch_function_mode_enabled()
            or torch._C._are_functorch_transforms_active())


def is_tracing() -> bool:
    """Whether code runs under torch.compile, torch.export or make_fx (no tensor values exist)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or get_proxy_mode() is not None

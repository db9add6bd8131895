"""The ``sciml`` operator library: building it, loading it, and its Python-side registrations.

Every compiled kernel of sciml is a ``torch.library`` operator in the ``sciml`` namespace
(``torch.ops.sciml.*``): the schemas and CPU implementations are C++ (``kernels/sciml_ops.cpp``,
shipped as ``sciml._kernels``), built with PyTorch's extension machinery the first time they are
needed and cached in ``$SCIML_CACHE_DIR/kernels`` (default ``~/.cache/sciml/kernels``) under a key
of the source, torch's version, the compiler and the CPU, so a home directory shared by different
machines or torch installs never loads a foreign build. The numerical CPU kernels themselves are C
generated per problem (``sciml.ops.cbuild``) and named to an operator as ``"path.so:symbol"``.

Registered here, once the library is loaded:

- fake (meta) implementations, so shapes propagate under ``torch.compile``, ``make_fx`` and
  ``torch.export``;
- autograd formulas on the operators, whose gradients are the same operators (the tensor-product
  core is symmetric in its four slots), so gradients of any order (force training) trace and
  compile; the harmonics and Wigner-D operators differentiate their torch formulation when a
  differentiable backward is asked for;
- autocast: under CPU or CUDA autocast the operators run in float32 (their kernels take
  float32/float64), instead of falling back to the slower reference code.

Without a working compiler the library is unavailable: :func:`available` is False, one warning
says why, and the callers run their pure-torch code.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import platform
import warnings
from pathlib import Path
from typing import List, Optional

import torch

from sciml.ops.cbuild import cache_dir, compiler, cpu_model

SOURCE_NAME = "sciml_ops.cpp"
_state: dict = {"loaded": False, "failure": None, "warned": False}


def source_path() -> Path:
    """The C++ source of the operators (package data ``sciml._kernels``)."""
    return Path(str(importlib.resources.files("sciml._kernels") / SOURCE_NAME))


def _build_key(source: bytes) -> str:
    parts = [source, torch.__version__.encode(), compiler().encode(), cpu_model().encode(), platform.python_version().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _load() -> None:
    from torch.utils import cpp_extension

    source = source_path()
    if not source.exists():
        raise RuntimeError(f"operator source not found: {source}")
    key = _build_key(source.read_bytes())
    directory = cache_dir() / f"sciml_ops_{key}"
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CXX", compiler(cxx=True))
    cpp_extension.load(
        name=f"sciml_ops_{key}", sources=[str(source)], extra_cflags=["-O2"], build_directory=str(directory),
        is_python_module=False, verbose=False,
    )


def available() -> bool:
    """Whether ``torch.ops.sciml`` is loaded (building it on the first call; False, with one
    warning naming the reason, when it cannot be built)."""
    if not _state["loaded"] and _state["failure"] is None:
        if _schemas_exist():  # loaded by someone else (e.g. a host program): just register
            _register()
            _state["loaded"] = True
            return True
        try:
            _load()
            _register()
            _state["loaded"] = True
        except Exception as error:  # compiler, linker and loader errors all mean "unavailable"
            _state["failure"] = f"{type(error).__name__}: {str(error).strip()[:800]}"
    if _state["failure"] is not None and not _state["warned"]:
        _state["warned"] = True
        warnings.warn(f"sciml's compiled operators are unavailable ({_state['failure']}); "
                      "running the pure-torch kernels instead", RuntimeWarning, stacklevel=2)
    return _state["loaded"]


def unavailable_reason() -> str:
    """Why :func:`available` is False ("" when it is True)."""
    available()
    return _state["failure"] or ""


def _schemas_exist() -> bool:
    try:
        torch.ops.sciml.tp_core.default
        return True
    except (AttributeError, RuntimeError):
        return False


# ----------------------------------------------------------------------------------- calling
def call(name: str, *args):
    """``torch.ops.sciml.<name>(*args)``, differentiable to any order, also under ``torch.func``
    transforms (``torch.func.grad`` forces traced by make_fx).

    The autograd formula registered on the operator (for anyone calling ``torch.ops.sciml``
    directly) cannot run inside functorch transforms and costs tens of microseconds of Python per
    call; sciml's own calls go through ``autograd.Function`` classes with the same setup and
    backward (one in ``setup_context`` form for functorch, a lighter one for eager autograd and
    make_fx), or straight to the kernel when nothing needs a gradient. Under dynamo the operator
    itself is recorded, and so under ``torch.jit.trace`` (TorchScript).
    """
    op = getattr(torch.ops.sciml, name)
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or name not in _FUNCTIONS:
        return op(*args)  # dynamo and torch.jit.trace record the operator with its registered formula
    if torch._C._are_functorch_transforms_active():
        return _FUNCTIONS[name].apply(*args)
    if torch.is_grad_enabled() and any(isinstance(arg, torch.Tensor) and arg.requires_grad for arg in args):
        return _EAGER_FUNCTIONS[name].apply(*args)
    with torch._C._AutoDispatchBelowAutograd():  # nothing to differentiate: straight to the kernel
        return op(*args)


_FUNCTIONS: dict = {}
_EAGER_FUNCTIONS: dict = {}


def _differentiable(name: str, setup, backward) -> None:
    """Register ``backward`` (returning one gradient or None per argument) as the autograd of
    ``sciml::<name>`` and build its functorch-compatible ``autograd.Function``."""
    op = getattr(torch.ops.sciml, name).default

    def registered_backward(ctx, *grads):  # register_autograd wants lists for Tensor[] arguments
        return tuple([None] * len(arg) if isinstance(arg, list) else grad
                      for arg, grad in zip(ctx.arguments, backward(ctx, *grads)))

    def registered_setup(ctx, inputs, output):
        ctx.arguments = [[None] * len(arg) if isinstance(arg, (list, tuple)) and arg and isinstance(arg[0], torch.Tensor)
                         else None for arg in inputs]
        setup(ctx, inputs, output)

    torch.library.register_autograd(f"sciml::{name}", registered_backward, setup_context=registered_setup)
    def below_autograd(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    def eager_forward(ctx, *args):
        output = below_autograd(*args)
        setup(ctx, args, output)
        return output

    _FUNCTIONS[name] = type(f"{name}_function", (torch.autograd.Function,), {
        "forward": staticmethod(below_autograd), "setup_context": staticmethod(setup), "backward": staticmethod(backward),
    })
    _EAGER_FUNCTIONS[name] = type(f"{name}_eager_function", (torch.autograd.Function,), {
        "forward": staticmethod(eager_forward), "backward": staticmethod(backward),
    })


# ----------------------------------------------------------------------------------- registration
def _register() -> None:
    """Fake implementations, autograd formulas and autocast rules of every operator."""
    lib = torch.library
    lib.register_fake("sciml::tp_core")(_tp_core_fake)
    lib.register_fake("sciml::tp_core_gradients")(
        lambda a, b, s, grad, paths, indices, values, columns, widths, kernel: (torch.empty_like(a), torch.empty_like(b), torch.empty_like(s))
    )
    lib.register_fake("sciml::permute_columns")(lambda x, columns, inverse, kernel: torch.empty_like(x))
    lib.register_fake("sciml::spherical_harmonics")(
        lambda points, kernels, dim, ls, normalization, normalize: points.new_empty(points.shape[0], dim)
    )
    lib.register_fake("sciml::spherical_harmonics_backward")(lambda points, grad, kernels, max_degree: torch.empty_like(points))
    lib.register_fake("sciml::wigner_blocks")(
        lambda rotations, kernels, lmax: rotations.new_empty(rotations.shape[0] * sum((2 * l + 1) ** 2 for l in range(lmax + 1)))
    )
    lib.register_fake("sciml::wigner_blocks_backward")(lambda rotations, grad, kernels, lmax: torch.empty_like(rotations))
    _differentiable("tp_core", _tp_core_setup, _tp_core_backward)
    _differentiable("permute_columns", _permute_setup, _permute_backward)
    _differentiable("spherical_harmonics", _harmonics_setup, _harmonics_backward)
    _differentiable("wigner_blocks", _wigner_setup, _wigner_backward)
    lib.impl("sciml::tp_core", "CUDA", _tp_core_gpu)
    for name in ("tp_core", "permute_columns", "spherical_harmonics", "wigner_blocks"):
        for device in ("cpu", "cuda"):
            lib.register_autocast(f"sciml::{name}", device, torch.float32)


# tensor-product core ---------------------------------------------------------------------------
def _tp_core_fake(a, b, s, o, map_a, map_b, map_s, map_o, tables, widths, kernels, out_slot, out_rows, num_terms, backend):
    reference = next(t for t in (a, b, s, o) if t is not None)
    return reference.new_empty(out_rows, widths[out_slot])


def _tp_core_gpu(a, b, s, o, map_a, map_b, map_s, map_o, tables, widths, kernels, out_slot, out_rows, num_terms, backend):
    """CUDA implementation: the "cuda" (CUDA C++) or "triton" kernel, by ``backend``."""
    from sciml.ops.tensor_product.core import core_backend, plan_from_tables

    if backend not in ("cuda", "triton"):
        raise ValueError(f"sciml::tp_core on CUDA tensors runs the cuda or triton backend, not {backend!r}")
    plan = plan_from_tables(tables[16:19], widths)
    return core_backend(backend)(plan, [a, b, s, o], [map_a, map_b, map_s, map_o], out_slot, out_rows, num_terms)


def _tp_core_setup(ctx, inputs, output) -> None:
    a, b, s, o, map_a, map_b, map_s, map_o, tables, widths, kernels, out_slot, out_rows, num_terms, backend = inputs
    ctx.present = [t is not None for t in (a, b, s, o, map_a, map_b, map_s, map_o)]
    ctx.save_for_backward(*[t for t in (a, b, s, o, map_a, map_b, map_s, map_o) if t is not None], *tables)
    ctx.static = (len(tables), list(widths), kernels, out_slot, num_terms, backend)


def _tp_core_backward(ctx, grad):
    """The gradient for an input slot is the core with that slot as the output (the product is
    symmetric in its four slots), so gradients of every order are this operator."""
    saved = list(ctx.saved_tensors)
    count, widths, kernels, out_slot, num_terms, backend = ctx.static
    tensors: List[Optional[torch.Tensor]] = [saved.pop(0) if present else None for present in ctx.present]
    operands, rowmaps, tables = tensors[:4], tensors[4:], saved[:count]
    operands[out_slot] = grad
    needs = ctx.needs_input_grad[:4]
    none = [None] * 11  # row maps, tables and static arguments
    if (backend == "cpu" and out_slot == 3 and all(m is None for m in rowmaps) and all(needs[:3])
            and not torch.is_grad_enabled()):  # first derivatives only: all three in one pass
        from sciml.ops.tensor_product.cpu import fused_gradients

        grads = fused_gradients(tables, widths, kernels, *operands)
        if grads is not None:
            return (*grads, None, *none)
    grads: List[Optional[torch.Tensor]] = [None] * 4
    for slot in range(4):
        if slot == out_slot or not needs[slot]:
            continue
        others = list(operands)
        rows = others[slot].shape[0]
        others[slot] = None
        grads[slot] = call("tp_core", *others, *rowmaps, tables, widths, kernels, slot, rows, num_terms, backend)
    return (*grads, *none)


# column permutation -----------------------------------------------------------------------------
def _permute_setup(ctx, inputs, output) -> None:
    _, columns, inverse, kernel = inputs
    ctx.save_for_backward(columns, inverse)
    ctx.kernel = kernel


def _permute_backward(ctx, grad):
    columns, inverse = ctx.saved_tensors
    return call("permute_columns", grad, inverse, columns, ctx.kernel), None, None, None


# spherical harmonics ------------------------------------------------------------------------------
def _harmonics_setup(ctx, inputs, output) -> None:
    points, kernels, dim, ls, normalization, normalize = inputs
    ctx.save_for_backward(points)
    ctx.static = (kernels, tuple(ls), normalization, normalize)


def _harmonics_backward(ctx, grad):
    """First derivatives by the compiled backward; a differentiable backward (higher orders)
    differentiates the torch formulation of the same harmonics."""
    from sciml.ops.spherical_harmonics import torch_harmonics

    (points,) = ctx.saved_tensors
    kernels, ls, normalization, normalize = ctx.static
    if torch.is_grad_enabled():
        with torch.enable_grad():
            source = points if points.requires_grad else points.detach().requires_grad_(True)
            harmonics = torch_harmonics(source, ls, normalization, normalize)
            (out,) = torch.autograd.grad(harmonics, source, grad, create_graph=True)
    else:
        out = torch.ops.sciml.spherical_harmonics_backward(points, grad, kernels, max(ls))
    return out, None, None, None, None, None


# Wigner-D blocks -----------------------------------------------------------------------------------
def _wigner_setup(ctx, inputs, output) -> None:
    rotations, kernels, lmax = inputs
    ctx.save_for_backward(rotations)
    ctx.static = (kernels, lmax)


def _wigner_backward(ctx, grad):
    """As for the harmonics: compiled first derivatives, the torch formulation for higher ones."""
    from sciml.ops.wigner import torch_flat_blocks

    (rotations,) = ctx.saved_tensors
    kernels, lmax = ctx.static
    if torch.is_grad_enabled():
        with torch.enable_grad():
            source = rotations if rotations.requires_grad else rotations.detach().requires_grad_(True)
            (out,) = torch.autograd.grad(torch_flat_blocks(lmax, source), source, grad, create_graph=True)
    else:
        out = torch.ops.sciml.wigner_blocks_backward(rotations, grad, kernels, lmax)
    return out, None, None

"""``torch.compile`` for training, also on forces and stress.

A model whose loss reads only its outputs is compiled as it is (:func:`compile_model`). Forces
(-dE/dx) and stress (dE/dstrain / V) are different: they are gradients of the energy, and the loss
on them is differentiated once more by ``loss.backward()``, a double backward that compiled graphs
do not support. :class:`CompiledOutputs` therefore traces one function, energy with its
derivatives, into a single forward graph with
:func:`torch.fx.experimental.proxy_tensor.make_fx` at symbolic sizes, then compiles that graph;
``loss.backward()`` is its ordinary first derivative. NequIP and MACE compile their training this
way.

The derivatives are taken with ``torch.func.grad`` (:func:`outputs_with_derivatives`,
:func:`~sciml.inference.energy_gradients`), not with the ``torch.autograd.grad(create_graph=True)``
inside the models' forward, whose traced graph gives parameter gradients of force losses off by
1e-7 relative; ``torch.func`` writes the backward as functions of the inputs, and the traced graph
differentiates exactly.

Nothing here knows a particular model: any energy model that ``make_fx`` can trace (torch
operations, and custom ops with fake and autograd implementations; no values read back to the
host) and that takes an :class:`~sciml.graph.AtomicGraph` works.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Dict, Hashable, List, Optional

import torch
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import is_concrete_int
from torch.utils import _pytree as pytree

from sciml.graph import AtomicGraph, stress_from_virial
from sciml.inference import energy_gradients, model_outputs, takes_derivative_flags
from sciml.train.config import COMPILE_BACKENDS


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """``model.compile()`` in place (``torch.compile`` of its forward with ``backend``, one of
    :data:`~sciml.train.config.COMPILE_BACKENDS`; weights and state-dict keys are unchanged), for models whose loss reads
    their outputs only. The first batches of each new shape are slow while the graph compiles.
    """
    _check_backend(backend)
    model.compile(dynamic=True, backend=backend)
    return model


def outputs_with_derivatives(model: nn.Module, graph: AtomicGraph, compute_forces: bool,
                             compute_stress: bool) -> Dict[str, torch.Tensor]:
    """``model_outputs(model, graph, compute_forces, compute_stress)``, with the forces (N, 3) eV/Å
    and stress (B, 3, 3) eV/Å^3 of conservative models taken by ``torch.func.grad``
    (:func:`~sciml.inference.energy_gradients`), the model itself called without derivatives.

    Conservative models are those declaring ``forces = "conservative"`` that take ``compute_forces``.
    Other models, and calls that ask for no derivative, are :func:`model_outputs` itself.
    """
    conservative = model.forces == "conservative" and (compute_forces or compute_stress)
    if not conservative or not takes_derivative_flags(model):
        return model_outputs(model, graph, compute_forces, compute_stress)
    out, forces, virial = energy_gradients(model, graph, strain=compute_stress)
    if compute_forces:
        out["forces"] = forces
    if compute_stress:
        out["stress"] = stress_from_virial(virial, graph.cell, graph.pbc)
    return out


def _check_backend(backend: str) -> None:
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"compile backend must be one of {', '.join(COMPILE_BACKENDS)}, got {backend!r}")


class CompiledOutputs:
    """``model_outputs(model, batch, compute_forces, compute_stress)`` run as one compiled graph
    that holds the forward pass and the derivatives (forces, stress), so force and stress losses
    train through ``torch.compile``.

    One graph is traced and compiled per kind of batch: the model's train/eval mode, grad and
    autocast modes, the batch's layout (its pytree structure: which properties and optional
    fields it carries; labels are left out, models do not read them) and its tensors' dtypes and
    devices. Sizes (atoms, edges, structures) are symbolic, so batches of every size share the
    graph; ``torch.compile`` compiles once more for a batch of one structure (it specialises
    sizes 0 and 1), which a training set that is a multiple of the batch size never has.

    The graph reads the model's own parameters and buffers (the same tensor objects; for the
    parameters this is checked when it is traced), so gradients land in ``p.grad`` for the optimizer, gradient clipping and the
    data-parallel all-reduce, and in-place changes (optimizer steps, ``load_state_dict``, EMA)
    are seen; replacing a parameter object is not (see :meth:`__call__`). Random operations
    (dropout, drop path) are traced as calls on the global generator and inductor keeps them so
    (``fallback_random``): a seeded compiled run draws the same numbers as an eager one.

    Args:
        model: maps an :class:`AtomicGraph` to a dict of outputs (see :func:`model_outputs`).
        compute_forces, compute_stress: passed to the model, as for :func:`model_outputs`.
        backend: ``"inductor"`` (generated kernels) or ``"aot_eager"`` (the same traced graph
            and its derivative run op by op: compiles in seconds, for checks).
    """

    def __init__(self, model: nn.Module, compute_forces: bool, compute_stress: bool, backend: str = "inductor"):
        _check_backend(backend)
        self.model, self.compute_forces, self.compute_stress, self.backend = model, compute_forces, compute_stress, backend
        self.graphs: Dict[Hashable, Callable] = {}
        self._parameters = tuple(model.parameters())

    def __call__(self, batch: AtomicGraph) -> Dict[str, torch.Tensor]:
        """The model's outputs on ``batch`` (as eager ``model_outputs``), through the compiled graph
        of its kind; the first batch of a kind traces and compiles it (seconds to minutes).

        Raises:
            RuntimeError: the model's parameters were replaced by new tensor objects since the
                graphs were traced (load weights in place, e.g. ``load_state_dict`` without ``assign``).
        """
        if any(a is not b for a, b in zip(self._parameters, self.model.parameters())):
            raise RuntimeError("the model's parameters were replaced after torch.compile traced it; load weights "
                               "in place (load_state_dict without assign=True)")
        # The compiled graph takes the batch's tensors only: its layout (and the cutoff it carries)
        # is fixed per graph, so no Python scalar becomes a symbolic input. Labels are left out:
        # the model does not read them, and they would only add inputs to guard.
        inputs = replace(batch, energy=None, forces=None, stress=None)
        leaves, layout = pytree.tree_flatten(inputs)
        device = batch.positions.device.type
        key = (self.model.training, torch.is_grad_enabled(), torch.is_autocast_enabled(device),
               torch.get_autocast_dtype(device), repr(layout),
               tuple(None if t is None else (t.dtype, t.device) for t in leaves))
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._compile(inputs, leaves, layout)
        return graph(*leaves)

    def _compile(self, inputs: AtomicGraph, leaves: List[Optional[torch.Tensor]], layout: pytree.TreeSpec) -> Callable:
        """Trace the outputs function at the batch ``inputs`` (flattened: ``leaves`` of the pytree
        ``layout``) with symbolic sizes, then ``torch.compile`` it.

        Raises:
            ValueError: tracing fixed the number of atoms or edges (see :func:`_check_sizes`).
        """
        def outputs(*tensors: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
            graph = pytree.tree_unflatten(tensors, layout)
            return outputs_with_derivatives(self.model, graph, self.compute_forces, self.compute_stress)

        # Without duck sizing, a size that happens to equal another (16 atoms and a 16-wide
        # layer) stays its own symbol instead of being tied to it.
        with fx_config.patch(use_duck_shape=False):
            traced = make_fx(outputs, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*leaves)
        _check_sizes(traced, leaves, inputs)
        self._check_captured_state(traced)
        options = {"fallback_random": True} if self.backend == "inductor" else None
        return torch.compile(traced, backend=self.backend, dynamic=True, fullgraph=True, options=options)

    def _check_captured_state(self, traced: torch.fx.GraphModule) -> None:
        """The traced graph holds the model's tensors themselves, not copies that training would
        leave behind: every parameter it captured is one of the model's."""
        own = {id(p) for p in self.model.parameters()}
        copies = [name for name, p in traced.named_parameters() if id(p) not in own]
        if copies:
            raise RuntimeError(f"torch.compile: the traced graph holds copies of parameters ({', '.join(copies)}), "
                               f"which training would not update")


def _check_sizes(traced: torch.fx.GraphModule, leaves: List[Optional[torch.Tensor]], inputs: AtomicGraph) -> None:
    """Raise ValueError when tracing fixed the number of atoms or edges to the example's (code
    that turns a size into a Python int, e.g. a loop over chunks of edges): such a graph only
    fits batches of that size."""
    values = [node.meta.get("val") for node in traced.graph.nodes if node.op == "placeholder"]
    for what, tensor, dim in (("atoms", inputs.positions, 0), ("edges", inputs.edge_index, 1)):
        size = next(value for value, leaf in zip(values, leaves) if leaf is tensor).shape[dim]
        if is_concrete_int(size):
            raise ValueError(f"torch.compile: tracing the model fixed the number of {what} to {int(size)} (Python code "
                             f"reads that size as an int), so the compiled graph would fit no other batch")

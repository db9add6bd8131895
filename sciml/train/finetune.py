"""Fine-tuning: a new run that starts from the weights of a trained model (``init_from``).

``init_from: CHECKPOINT`` (``sciml train --init-from CHECKPOINT``) names a sciml checkpoint or a
fairchem EquiformerV2 checkpoint (anything :func:`sciml.inference.load_model` reads). The run is
new in every other respect: its own data, split, optimizer, schedule and epochs; the learning
rate is ``optimizer.lr`` as configured (no lower one is chosen for you).

- Model: its name and options come from the checkpoint. ``model.name``, when given, must be the
  checkpoint's; ``model.options`` override the checkpoint's options only where they keep every
  parameter shape (dropout rates, say): options that change a shape are refused, naming them.
  ``model.preset`` does not apply. The resolved ``config.yaml`` holds the options used.
- Elements: EGNN (``num_elements``) and EquiformerV2 (``max_num_elements``) embed elements in a
  table with a row per atomic number, so an element the parent never saw already has its rows:
  the untrained values of the parent's initialisation, which the fine-tune then trains. Nothing
  is added to the model; an element beyond the table (atomic number >= its size) is refused. The
  run's domain holds the union of the parent's elements and those of the new training set (its
  labels and ranges are the new training set's).
- Reference energies (``data.element_energies``): ``refit`` (the default with ``init_from``: least
  squares on the new training set, since other DFT settings shift energies per element),
  ``keep`` (the parent's energy-head references; refused when the new data holds an element the
  parent has none for), or ``fit``/``zero``/a mapping as in any run. The energy head's per-atom
  scale stays the parent's (the pretrained weights were learned with it) unless ``reset_heads``.
- ``freeze``: parameter names or glob patterns (``blocks.0.*``, ``embedding.*``; a module name
  stands for all its parameters); frozen parameters get ``requires_grad`` False and are left out
  of the optimizer. A pattern that matches no parameter is refused.
- ``reset_heads``: the modules the model declares as its ``heads`` (:mod:`sciml.models.contract`)
  get the values of a newly built model (the random initialisation, and the energy head's references and scale refitted on the new data).
  The output normalisation of converted fairchem models (EquiformerV2's ``energy_shift`` and
  ``force_scale`` buffers) is kept either way.
- The parent is recorded (``parent``: path and sha256) in every checkpoint of the run, in its
  header and ``train.log``, and shown by ``sciml info``. Resuming (``--resume auto``) continues
  the fine-tune from its own checkpoints; the parent file must still be there, unchanged (its
  options and references define the run).

Refused with one line, before anything is written: a file that is no checkpoint, a checkpoint of
another model than ``model.name``, options that change shapes, a freeze pattern that matches
nothing, an element beyond the embedding, and labels the model cannot predict (a loss on stress
for a model without stress, a property it has no output for).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from ase.data import chemical_symbols
from torch import nn

from sciml.inference import load_model
from sciml.io.files import file_sha256
from sciml.models import build_model
from sciml.models.domain import ModelDomain
from sciml.models.heads import energy_head
from sciml.train.config import TrainConfig

@dataclass
class Parent:
    """The checkpoint a fine-tune starts from: its ``path``, ``sha256`` (hex digest of the file)
    and the model it holds (as :func:`~sciml.inference.load_model` returns it, on the CPU)."""

    path: str
    sha256: str
    model: nn.Module

    @classmethod
    def load(cls, path: "str | Path") -> "Parent":
        """Read ``path``; :class:`~sciml.errors.CheckpointError` (one line) for a file that is no
        sciml or fairchem checkpoint."""
        return cls(str(path), file_sha256(path), load_model(path))

    def record(self) -> Dict[str, str]:
        """What checkpoints store: ``{"path"`` (absolute), ``"sha256"}``."""
        return {"path": str(Path(self.path).resolve()), "sha256": self.sha256}

    def describe(self) -> str:
        """``<path> (<model>, sha256 <first 12 hex digits>)``."""
        return f"{self.path} ({self.model.model_name}, sha256 {self.sha256[:12]})"

    def element_energies(self) -> Optional[torch.Tensor]:
        """The parent's energy-head references (NUM_ELEMENTS,) eV, or None without an energy head."""
        head = energy_head(self.model)
        return head.element_energies.detach().double().clone() if head is not None else None

    def elements(self) -> List[int]:
        """Atomic numbers of the parent's domain (none when it recorded no domain)."""
        domain = self.model.domain
        return list(domain.elements) if domain is not None else []


def resolve_config(config: TrainConfig, parent: Parent) -> TrainConfig:
    """``config`` with the parent's model: ``model.name`` and the full ``model.options`` (the
    parent's, overridden by the config's where shapes stay), ``model.preset`` None.

    Raises:
        ValueError: ``model.name`` names another model, ``model.preset`` is set, or options change
            a parameter shape (one line naming them).
    """
    name, source = parent.model.model_name, parent.path
    if config.model.name not in (None, name):
        raise ValueError(f"init_from {source} holds a {name!r} model, but model.name is {config.model.name!r}")
    if config.model.preset is not None:
        raise ValueError(f"config key model.preset does not apply with init_from: the options come from {source}")
    saved = parent.model.options.to_dict()
    options = {**saved, **config.model.options}
    model = build_model(name, **options)
    theirs = {k: tuple(v.shape) for k, v in parent.model.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if ours != theirs:
        changed = [f"{k}={v!r} (checkpoint: {saved.get(k)!r})" for k, v in config.model.options.items()
                   if saved.get(k) != v]
        raise ValueError(f"init_from {source}: model.options {', '.join(changed) or '(none)'} change the shapes of "
                         f"its parameters; leave them out (only options that keep the shapes may change)")
    resolved = dataclasses.replace(config.model, name=name, preset=None, options=model.options.to_dict())
    return dataclasses.replace(config, model=resolved)


def start_from_parent(model: nn.Module, parent: Parent, reset_heads: bool) -> None:
    """Load the parent's weights into ``model`` (built with the resolved options); with
    ``reset_heads`` the modules it declares as its ``heads`` then get the values of a newly built model."""
    model.load_state_dict(parent.model.state_dict())
    if not reset_heads:
        return
    names = model.heads
    if not names:
        raise ValueError(f"reset_heads: model {model.model_name!r} declares no output heads (Model.heads)")
    fresh = build_model(model.model_name, **model.options.to_dict()).state_dict()
    prefixes = tuple(f"{name}." for name in names)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.startswith(prefixes):
                value.copy_(fresh[key])


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> int:
    """Set ``requires_grad`` False on the parameters matching ``patterns`` (fnmatch globs of
    parameter names; a module name matches all its parameters); returns how many tensors.

    Raises:
        ValueError: a pattern that matches no parameter (one line, with a few names).
    """
    names = [name for name, _ in model.named_parameters()]
    frozen = set()
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, f"{pattern}.*")]
        if not matched:
            modules = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"config key freeze: {pattern!r} matches no parameter of {model.model_name} "
                             f"(its modules: {', '.join(modules)}; e.g. {names[0]!r})")
        frozen.update(matched)
    for name, parameter in model.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return len(frozen)


def check_new_data(config: TrainConfig, model: nn.Module, parent: Parent, samples: Sequence[Any]) -> List[int]:
    """Refuse data the fine-tuned model cannot learn; returns the new elements (atomic numbers
    of ``samples`` outside the parent's domain), ascending.

    Raises:
        ValueError: an element beyond the model's element embedding; ``keep`` references with a
            new element; a loss on stress for a model without stress output; a loss property the
            model has no output for.
    """
    graphs = [g for g in samples if hasattr(g, "atomic_numbers")]  # none for the fields of neural operators
    numbers = sorted({int(z) for g in graphs for z in g.atomic_numbers.unique().tolist()})
    size = getattr(model, "num_elements", None)
    beyond = [z for z in numbers if size is not None and z >= size]
    if beyond:
        raise ValueError(f"init_from {parent.path}: element {chemical_symbols[beyond[0]]} (Z={beyond[0]}) of the new "
                         f"data lies beyond the model's element embedding (atomic numbers < {size}); a fine-tune "
                         f"cannot add rows to it")
    new = [z for z in numbers if z not in parent.elements()] if parent.elements() else []
    if config.data.element_energies == "keep" and new:
        raise ValueError(f"data.element_energies keep: {parent.path} has no reference energy for "
                         f"{', '.join(chemical_symbols[z] for z in new)} (new in this data); use refit")
    outputs = model.outputs
    stress = bool(graphs) and graphs[0].stress is not None and any(bool(g.pbc.any()) for g in graphs)
    if config.loss.stress > 0 and stress and "stress" not in outputs:
        raise ValueError(f"init_from {parent.path}: the data has stress labels and loss.stress is "
                         f"{config.loss.stress:g}, but this {model.model_name} model predicts no stress; "
                         f"set loss.stress=0")
    for key, weight in config.loss.properties.items():
        predicted = config.data.prediction_keys.get(key, key)
        if weight > 0 and predicted not in outputs:
            raise ValueError(f"init_from {parent.path}: loss.properties has {key!r}, but the model predicts no "
                             f"{predicted!r} (its outputs: {', '.join(outputs)})")
    return new


def after_fit(model: nn.Module, parent: Parent, reset_heads: bool) -> None:
    """Once the training statistics are set (the energy head's references as
    ``data.element_energies`` says): give the energy head back the parent's per-atom scale
    (unless ``reset_heads``) and widen the model's domain to the parent's elements too."""
    head, theirs = energy_head(model), energy_head(parent.model)
    if head is not None and theirs is not None and not reset_heads:
        head.scale.copy_(theirs.scale)
    domain: Optional[ModelDomain] = model.domain
    if domain is not None:
        elements = tuple(sorted(set(domain.elements) | set(parent.elements())))
        model.domain = dataclasses.replace(domain, elements=elements)


def header_line(parent: Parent, config: TrainConfig, frozen: int, total: int, new_elements: Sequence[int]) -> str:
    """The run header's ``parent`` line: the checkpoint, its hash, the references chosen, frozen
    parameter tensors, reset heads and elements new to the parent."""
    parts = [f"parent   {parent.describe()}", f"element energies {config.data.element_energies}"
             if isinstance(config.data.element_energies, str) else "element energies given"]
    if frozen:
        parts.append(f"{frozen}/{total} parameter tensors frozen ({', '.join(config.freeze)})")
    if config.reset_heads:
        parts.append(f"heads reset ({', '.join(parent.model.heads)})")
    if new_elements:
        parts.append(f"new elements {' '.join(chemical_symbols[z] for z in new_elements)} (untrained embedding rows)")
    return "; ".join(parts)

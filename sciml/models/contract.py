"""The model contract: what every sciml model declares, and the registry that builds models by name.

A model is one file. It defines a frozen options dataclass (plain-typed fields with defaults; its
presets are named instances) and a module that takes it, registered under its name::

    @dataclass(frozen=True)
    class PairOptions(ModelOptions):
        cutoff: float = 5.0
        hidden: int = 32

    @register_model("pair", PairOptions, presets={"wide": PairOptions(hidden=128)})
    class PairModel(MessagePassing, Model):
        symmetry = "E(3)"
        outputs = ENERGY_OUTPUTS
        forces = "conservative"

        def __init__(self, options: PairOptions):
            super().__init__(cutoff=options.cutoff)
            self.options = options
            ...

Then ``build_model("pair", preset="wide", cutoff=4.0)`` builds it, the trainer trains it, the
calculator serves it (graph models with an ``energy`` output), checkpoints store its options, and
the conformance suite (:mod:`sciml.testing.conformance`) checks what it declares.

What a model declares (read by the trainer, the calculator, ``sciml check`` and export; nothing
probes for optional attributes):

- ``model_name``: its registry key (set by :func:`register_model`);
- ``options``: its options object (``build_model(model.model_name, **model.options.to_dict())``
  rebuilds it);
- ``outputs``: output name -> :class:`Output` (kind for the equivariance checker, and unit);
- ``symmetry``: "E(3)" (rotations, reflections, translations, permutations), "SE(3)" (the same
  without reflections), "p4" / "p4m" (90-degree rotations / and reflections of a grid's (x, y)
  plane) or "trivial";
- ``forces``: "conservative" (-dE/dx, with stress from the strain derivative), "direct" (a force
  head) or None (no forces);
- ``inputs``: "graph" (``forward(graph: AtomicGraph, ...)``; then ``graph_spec`` says how the graph
  is built, and ``atom_inputs`` names the per-atom inputs read from ``graph.atom_properties`` with
  their kind) or "grid" (channels-last tensors; ``space_time`` True when the model maps
  (B, X, Y, T, C_in) -> (B, X, Y, T, C_out) at once instead of stepping (B, X, Y, T_in));
- ``heads``: names of its output-head modules (new values with fine-tuning's ``reset_heads``);
- ``domain``: what it was trained on (:class:`~sciml.models.domain.ModelDomain`; None untrained).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Mapping, NamedTuple, Optional, Tuple, Type, TypeVar

from torch import nn

from sciml.graph import GraphSpec

SYMMETRIES = ("E(3)", "SE(3)", "p4", "p4m", "trivial")
FORCE_KINDS = ("conservative", "direct")


class Output(NamedTuple):
    """One model output: its kind (see :mod:`sciml.testing.equivariance`: ``energy``, ``scalar``,
    ``vector``, ``tensor``, ``atom_scalar``, ``atom_vector``, ``atom_position``, or ``field`` for a
    grid model's output) and its unit ("" for dimensionless or dataset units)."""

    kind: str
    unit: str


#: the outputs of an energy model: total energy, per-atom energies, forces and stress
ENERGY_OUTPUTS: Mapping[str, Output] = {
    "energy": Output("energy", "eV"),
    "energies": Output("atom_scalar", "eV"),
    "forces": Output("atom_vector", "eV/Å"),
    "stress": Output("tensor", "eV/Å^3"),
}


@dataclass(frozen=True)
class ModelOptions:
    """Base of every model's options: a frozen dataclass of plain-typed fields (bool, int, float,
    str, their Optional). Integers given for float fields become floats; other type mismatches
    raise ValueError naming the option."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = _allowed_types(hints[f.name])
            if value is None and type(None) in allowed:
                continue
            if float in allowed and isinstance(value, int) and not isinstance(value, bool) and int not in allowed:
                object.__setattr__(self, f.name, float(value))
                continue
            if not isinstance(value, tuple(t for t in allowed if t is not type(None))) or (
                    isinstance(value, bool) and bool not in allowed):
                names = " or ".join(t.__name__ for t in allowed)
                raise ValueError(f"option {f.name} of {type(self).__name__} must be {names}, got {value!r}")

    def to_dict(self) -> Dict[str, Any]:
        """The options as a plain dict (what checkpoints store)."""
        return dataclasses.asdict(self)

    def replace(self, owner: str = "", **changes: Any) -> "ModelOptions":
        """A copy with ``changes``; unknown names raise ValueError listing the valid ones (naming
        ``owner``, e.g. "model egnn", or else the options class)."""
        valid = [f.name for f in dataclasses.fields(self)]
        unknown = [name for name in changes if name not in valid]
        if unknown:
            raise ValueError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                             f"for {owner or type(self).__name__}; valid: {', '.join(valid)}")
        return dataclasses.replace(self, **changes)


def _allowed_types(hint: Any) -> Tuple[type, ...]:
    """The runtime types a field annotation admits (Optional/Union unpacked)."""
    if typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in _allowed_types(arg))
    return (hint,)


class Model:
    """The contract every registered model meets (mixed into an ``nn.Module``; see the module
    docstring). Class attributes are defaults a model overrides as class attributes or properties."""

    model_name: ClassVar[str]
    options: ModelOptions
    symmetry: ClassVar[str] = "trivial"
    outputs: Mapping[str, Output] = {}
    forces: Optional[str] = None
    inputs: ClassVar[str] = "graph"
    #: graph models: per-atom inputs read from ``graph.atom_properties``, name -> kind
    #: ("atom_vector" (N, 3) or "atom_scalar" (N,))
    atom_inputs: ClassVar[Mapping[str, str]] = {}
    space_time: bool = False
    heads: ClassVar[Tuple[str, ...]] = ()
    graph_spec: Optional[GraphSpec] = None
    domain: Optional[Any] = None


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: the class, its options type, its presets, options fixed by the name
    (e.g. the group of ``gfno2d_p4``) and a small configuration (fast to run: quick examples and
    the conformance suite; None: the defaults are small enough)."""

    name: str
    cls: Type[nn.Module]
    options: Type[ModelOptions]
    presets: Mapping[str, ModelOptions]
    fixed: Mapping[str, Any]
    small: Optional[ModelOptions] = None

    def resolve(self, preset: Optional[str] = None, **options: Any) -> ModelOptions:
        """The options object for ``preset`` (or the defaults) with ``options`` applied."""
        if preset is not None and preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r} for model {self.name}; "
                             f"available: {', '.join(sorted(self.presets)) or 'none'}")
        clash = [k for k, v in options.items() if k in self.fixed and v != self.fixed[k]]
        if clash:
            raise ValueError(f"model {self.name} fixes {', '.join(f'{k}={self.fixed[k]!r}' for k in clash)}")
        base = self.presets[preset] if preset is not None else self.options(**self.fixed)
        return base.replace(f"model {self.name}", **options)


MODELS: Dict[str, ModelEntry] = {}
M = TypeVar("M", bound=type)


def register_model(name: str, options: Type[ModelOptions], presets: Optional[Mapping[str, ModelOptions]] = None,
                   fixed: Optional[Mapping[str, Any]] = None, small: Optional[ModelOptions] = None) -> Callable[[M], M]:
    """Class decorator: register a model under ``name`` (stack it to register one class under
    several names with different ``fixed`` options). Its class must derive :class:`Model` and
    take its options object as the only constructor argument. The decorator sets ``model_name``
    for a class registered under one name; a class registered under several names sets it from
    its options (the conformance suite checks it equals the registry key)."""

    def register(cls: M) -> M:
        if not issubclass(cls, Model) or not issubclass(cls, nn.Module):
            raise TypeError(f"{cls.__name__} must derive sciml.models.Model and torch.nn.Module")
        if name in MODELS and MODELS[name].cls is not cls:
            raise ValueError(f"model name {name!r} is taken by {MODELS[name].cls.__name__}")
        wrong = [k for k, v in {**(presets or {}), "small": small or options(**(fixed or {}))}.items()
                 if not isinstance(v, options)]
        if wrong:
            raise TypeError(f"presets {wrong} of {name} are not {options.__name__} objects")
        MODELS[name] = ModelEntry(name, cls, options, dict(presets or {}), dict(fixed or {}), small)
        if not fixed:
            cls.model_name = name
        return cls

    return register


def model_entry(name: str) -> ModelEntry:
    """The registration of model ``name``; ValueError naming the available ones."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(name: str, preset: Optional[str] = None, **options: Any) -> nn.Module:
    """Build model ``name`` from its defaults or a named ``preset`` (e.g.
    ``build_model("equiformer_v2", preset="oc20_31M")``), with ``options`` overriding fields.
    Unknown names, presets and options raise ValueError."""
    entry = model_entry(name)
    return entry.cls(entry.resolve(preset, **options))

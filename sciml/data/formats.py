"""The registry of data formats: one entry per format, consulted by training, ``sciml predict`` and the CLI.

How to add a format: in the reader's own module, call ``register_format(DataFormat(name=..., kind=...,
read=..., detect=..., auto_detect=..., streamable=...))`` at import time, with ``read`` of the kind's
signature (:data:`KINDS`). A format registered from outside the package (a plugin, a test) works once
its module is imported; a built-in one must also be listed in :data:`_BUILTIN_MODULES`. Nothing else
changes: ``data.format`` accepts the name, the trainer picks its problem by ``kind``, and
``sciml predict`` reads the files ``detect`` accepts when ``streamable``.

Kinds (what ``read`` takes and returns, and how the trainer uses it):

- ``structures``: ``read(path) -> list[ase.Atoms]``, labels (energy eV, forces eV/Å, stress eV/Å^3,
  properties) in the calculator results, ``info`` or ``arrays`` under the ``data.*_key`` names;
  trained as atomic graphs (energy models or property models);
- ``oc20``: ``read(source, subtract_reference) -> Iterator[Record]`` of OC20 records
  (:mod:`sciml.data.oc20.records`), trained as atomic graphs with OC20's fixed label names;
- ``crystals``: ``read(path, **options) -> list[CrystalRecord]`` (:mod:`sciml.data.crystals`), trained
  on one scalar target of ``data.property_keys``;
- ``fields``: ``read(path, key, kind, channel) -> (N, X, Y, T) array`` of trajectories of one variable,
  trained as neural operators (:mod:`sciml.train.fields`).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

STRUCTURES, OC20, CRYSTALS, FIELDS = "structures", "oc20", "crystals", "fields"
KINDS = (STRUCTURES, OC20, CRYSTALS, FIELDS)
#: The format of structure files when no other format claims them: whatever ase (and sciml's CIF and
#: POSCAR readers) can read.
DEFAULT_FORMAT = "ase"
# Modules whose import registers the built-in formats, in the order their formats are consulted.
_BUILTIN_MODULES = ("sciml.data.readers", "sciml.data.oc20", "sciml.data.crystals", "sciml.data.pde.readers")

_REGISTRY: Dict[str, "DataFormat"] = {}
_builtins_loaded = False


@dataclass(frozen=True)
class DataFormat:
    """One data format.

    Attributes:
        name: the ``data.format`` value that selects it (e.g. ``"ase"``, ``"jarvis"``, ``"fno_mat"``).
        kind: one of :data:`KINDS`: what ``read`` returns and which training problem uses it.
        read: the reader, with the signature of ``kind`` (see the module docstring).
        detect: ``detect(path) -> bool``, True when the existing ``path`` (file or directory) is in
            this format; None when the format is only used by name.
        auto_detect: whether ``detect`` also applies when no format is named at all (``data.format``
            None, files given to ``sciml predict``); False keeps it to guesses among the formats of
            its kind (e.g. which crystal dataset, which OC20 source).
        streamable: whether ``sciml predict`` reads files of this format (``structures`` kind only):
            structure by structure for the default format, whole files read by ``read`` otherwise.
        description: a few words for messages and help texts.
    """

    name: str
    kind: str
    read: Callable[..., Any]
    detect: Optional[Callable[[Path], bool]] = None
    auto_detect: bool = False
    streamable: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"data format {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.streamable and self.kind != STRUCTURES:
            raise ValueError(f"data format {self.name!r}: only formats of kind {STRUCTURES} can be streamable")
        if self.auto_detect and self.detect is None:
            raise ValueError(f"data format {self.name!r}: auto_detect needs a detect rule")


def register_format(entry: DataFormat) -> DataFormat:
    """Add ``entry`` to the registry and return it. Detection tries formats in registration order
    (the built-in ones first unless a plugin registers before the registry is first consulted).

    Raises:
        ValueError: another format of that name is registered.
    """
    if entry.name in _REGISTRY and _REGISTRY[entry.name] != entry:
        raise ValueError(f"data format {entry.name!r} is registered already")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_format(name: str) -> None:
    """Remove the format ``name`` (a plugin's, e.g. at the end of a test); ValueError if unknown."""
    get_format(name)
    del _REGISTRY[name]


def get_format(name: str) -> DataFormat:
    """The format called ``name``.

    Raises:
        ValueError: no such format; the message names the registered ones.
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown data format {name!r}; registered formats: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def format_names(kind: Optional[str] = None) -> Tuple[str, ...]:
    """The registered format names (of ``kind`` only, when given), in registration order."""
    _load_builtin()
    return tuple(name for name, entry in _REGISTRY.items() if kind is None or entry.kind == kind)


def detect_format(path: Union[str, os.PathLike], kind: Optional[str] = None,
                  streamable: bool = False) -> Optional[DataFormat]:
    """The first registered format whose ``detect`` accepts ``path``: among the formats of ``kind``
    when given, else among those with ``auto_detect``; with ``streamable``, among those
    ``sciml predict`` reads only. None when none does (for structure files the caller then uses
    :data:`DEFAULT_FORMAT`)."""
    _load_builtin()
    path = Path(path)
    for entry in _REGISTRY.values():
        candidate = entry.kind == kind if kind is not None else entry.auto_detect
        if candidate and (entry.streamable or not streamable) and entry.detect is not None and entry.detect(path):
            return entry
    return None


def _load_builtin() -> None:
    """Import the modules that register the built-in formats (once; they register at import)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)

"""``patch_e3nn()``: run existing e3nn code on sciml's kernels, unchanged.

It replaces e3nn's tensor products, ``Linear`` and spherical harmonics by sciml's drop-ins
(same arguments, weights, state dicts and outputs) wherever they are bound in the loaded
modules: in ``e3nn.o3`` and its submodules, and in any module that imported them by name
(``from e3nn.o3 import TensorProduct``). Modules built while the patch is active use sciml;
modules built before keep e3nn's classes. ``undo()`` (or leaving the ``with`` block) puts every
replaced name back::

    with patch_e3nn():
        model = build_my_e3nn_model()      # its o3.TensorProduct / o3.Linear are sciml's
    handle = patch_e3nn(); ...; handle.undo()
"""

from __future__ import annotations

import sys
from typing import Dict, List, Tuple

from sciml.ops.linear import Linear
from sciml.ops.spherical_harmonics import SphericalHarmonics, spherical_harmonics
from sciml.ops.tensor_product import (
    ElementwiseTensorProduct,
    FullTensorProduct,
    FullyConnectedTensorProduct,
    TensorProduct,
    TensorSquare,
)

# e3nn.o3 name -> sciml replacement
REPLACEMENTS = {
    "TensorProduct": TensorProduct,
    "FullyConnectedTensorProduct": FullyConnectedTensorProduct,
    "FullTensorProduct": FullTensorProduct,
    "ElementwiseTensorProduct": ElementwiseTensorProduct,
    "TensorSquare": TensorSquare,
    "Linear": Linear,
    "SphericalHarmonics": SphericalHarmonics,
    "spherical_harmonics": spherical_harmonics,
}


class E3nnPatch:
    """The replacements made by :func:`patch_e3nn`; ``undo()`` restores them (idempotent)."""

    def __init__(self, replaced: List[Tuple[object, str, object]]) -> None:
        self.replaced = replaced  # (module, attribute name, original object)

    @property
    def active(self) -> bool:
        return bool(self.replaced)

    def undo(self) -> None:
        for module, name, original in reversed(self.replaced):
            setattr(module, name, original)
        self.replaced = []

    def __enter__(self) -> "E3nnPatch":
        return self

    def __exit__(self, *exc_info) -> None:
        self.undo()


def patch_e3nn() -> E3nnPatch:
    """Swap sciml's classes and functions into the imported e3nn (see the module docstring)."""
    import e3nn.o3

    originals: Dict[int, object] = {}
    for name, replacement in REPLACEMENTS.items():
        original = getattr(e3nn.o3, name)
        if original is replacement:
            raise RuntimeError("e3nn is already patched by sciml: undo the active patch first")
        originals[id(original)] = replacement
    replaced = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or module is sys.modules.get(__name__):
            continue
        for name, value in list(namespace.items()):
            replacement = originals.get(id(value))
            if replacement is not None and name in REPLACEMENTS and REPLACEMENTS[name] is replacement:
                replaced.append((module, name, value))
                setattr(module, name, replacement)
    return E3nnPatch(replaced)

"""The reference FNO-2D and G-FNO-2D (divelab AIRS ``OpenPDE/G-FNO``) loaded into this process, and
sciml's weights copied onto them, for same-run timing and numerical comparison.

The reference needs only torch. Its ``models/FNO.py`` and ``models/GFNO.py`` do
``from utils import grid``; they are executed here from their source text (nothing on disk is
changed) as private modules, with the reference's ``utils.py`` bound to the name ``utils`` only
while they execute. One in-memory patch makes them run in float64 as well: the hard-coded
dtypes follow the default dtype, ``torch.float`` (the real weights of ``GConv2d``) becoming
``torch.get_default_dtype()``, and ``torch.cfloat`` / ``.cfloat()`` (the spectral weights and
output spectra) complex128 when the default dtype is float64 and complex64 otherwise; with the
default float32 the code computes exactly what the published one does.
Build the models in float64 with :func:`default_dtype` (the reference's grid feature is a
``torch.linspace`` in the default dtype too).

The models are built as the reference's ``experiments.py`` builds them for 2D Navier-Stokes:
``FNO2d(num_channels=1, modes1=12, modes2=12, width=20, initial_step=10, grid_type)`` and
``GFNO2d(num_channels=1, modes=12, width=10 | 7, initial_step=10, reflection, grid_type)``.
Inputs are sciml's (B, x, y, t_in); the reference returns (B, x, y, 1, 1).

Weights map exactly (:func:`copy_to_reference`):

* pointwise maps: ``p`` (FNO's ``nn.Linear``) and every ``nn.Conv2d`` / ``GConv2d`` 1 x 1 weight
  ``W[o, 0, i(, e)]`` is sciml's ``GroupLinear.weight[o, i(, e)]``; biases are equal.
* FNO spectral weights: ``weights1`` (rows 0..m-1) and ``weights2`` (rows -m..-1), (in, out, m, m)
  complex, are sciml's ``SpectralConv.weight`` rows m..2m-1 and 0..m-1, (2m, m, in, out, 2) real.
* G-FNO spectral weights: the reference parametrises each Hermitian kernel W(k) = conj W(-k) on
  the centred (2m-1) x (2m-1) box by its half (``00_modes`` real, ``y0_modes`` and
  ``yposx_modes`` complex); sciml by one real array A with W = (A + A_rev)/2 + i (A - A_rev)/2,
  so A = Re W + Im W: the same (2m-1)^2 real numbers, a bijection.
* group elements: both store regular channels as (channel, element) with the element minor and
  the rotations 0..3 as the same quarter turns; the reference's reflected element 4 + r is the
  kernel ``flip_x(rot90^r(.))`` = ``rot90^-r(flip_x(.))``, sciml's element 4 + (-r mod 4).
"""

from __future__ import annotations

import contextlib
import re
import sys
import types
from pathlib import Path
from typing import Dict, Iterator

import torch
from torch import nn

#: sciml name -> (reference class, width, reflection)
REFERENCE_MODELS = {"fno2d": ("FNO2d", 20, False), "gfno2d_p4": ("GFNO2d", 10, False),
                    "gfno2d_p4m": ("GFNO2d", 7, True)}
_DTYPE_PATCHES = ((re.compile(r"\.cfloat\(\)"), ".to(_complex_dtype())"),
                  (re.compile(r"torch\.cfloat\b"), "_complex_dtype()"),
                  (re.compile(r"torch\.float\b"), "torch.get_default_dtype()"))
_LOADED: Dict[str, Dict[str, types.ModuleType]] = {}


def find_source(source: str | Path) -> Path:
    """The G-FNO folder (holding ``models/GFNO.py`` and ``utils.py``) under ``source``: the folder
    itself, ``OpenPDE/G-FNO`` below an AIRS checkout, or ``AIRS/OpenPDE/G-FNO`` below that."""
    source = Path(source)
    for candidate in (source, source / "OpenPDE" / "G-FNO", source / "AIRS" / "OpenPDE" / "G-FNO"):
        if (candidate / "models" / "GFNO.py").is_file() and (candidate / "utils.py").is_file():
            return candidate
    raise FileNotFoundError(f"no G-FNO source under {source} (looked for models/GFNO.py and utils.py)")


def _complex_dtype() -> torch.dtype:
    return torch.complex128 if torch.get_default_dtype() == torch.float64 else torch.complex64


def _execute(name: str, path: Path, patched: bool) -> types.ModuleType:
    text = path.read_text()
    if patched:
        for pattern, replacement in _DTYPE_PATCHES:
            text = pattern.sub(replacement, text)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    module._complex_dtype = _complex_dtype
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module


def load_reference(source: str | Path) -> Dict[str, types.ModuleType]:
    """The reference modules ``{"FNO": ..., "GFNO": ...}`` from the G-FNO folder ``source`` (cached)."""
    folder = find_source(source)
    key = str(folder.resolve())
    if key not in _LOADED:
        utils = _execute("_gfno_reference_utils", folder / "utils.py", patched=False)
        saved = sys.modules.get("utils")
        sys.modules["utils"] = utils
        try:
            _LOADED[key] = {name: _execute(f"_gfno_reference_{name}", folder / "models" / f"{name}.py", patched=True)
                            for name in ("FNO", "GFNO")}
        finally:
            if saved is None:
                del sys.modules["utils"]
            else:
                sys.modules["utils"] = saved
    return _LOADED[key]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Run the block with ``torch.get_default_dtype() == dtype`` (the reference builds its complex
    weights, output spectra and grid features in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_reference(name: str, source: str | Path, t_in: int = 10, modes: int = 12, grid: str = "symmetric",
                    width: int | None = None) -> nn.Module:
    """The reference model for sciml's ``name`` ("fno2d", "gfno2d_p4", "gfno2d_p4m") as
    ``experiments.py`` builds it, in the default dtype (see :func:`default_dtype`)."""
    modules = load_reference(source)
    class_name, default_width, reflection = REFERENCE_MODELS[name]
    width = default_width if width is None else width
    grid_type = "None" if grid == "none" else grid
    if class_name == "FNO2d":
        return modules["FNO"].FNO2d(num_channels=1, modes1=modes, modes2=modes, width=width, initial_step=t_in,
                                    grid_type=grid_type)
    return modules["GFNO"].GFNO2d(num_channels=1, modes=modes, width=width, initial_step=t_in, reflection=reflection,
                                  grid_type=grid_type)


def _element_map(order: int) -> torch.Tensor:
    """reference element index -> sciml element index."""
    return torch.tensor([r for r in range(4)] + [4 + (-r) % 4 for r in range(4)])[:order]


@torch.no_grad()
def copy_to_reference(model: nn.Module, reference: nn.Module) -> nn.Module:
    """Copy the weights of sciml's FNO2d / GFNO2d ``model`` onto ``reference`` (built by
    :func:`build_reference` with the same options and dtype); returns ``reference``."""
    order = model.group.order

    def pointwise(target, layer, shared: bool):
        weight = layer.weight
        if shared:  # (o, i, e) with sciml's e; the reference's 4 + r is sciml's 4 + (-r mod 4)
            weight = weight[:, :, _element_map(order)]
        if isinstance(target, nn.Linear):
            target.weight.copy_(weight)
            target.bias.copy_(layer.bias)
        elif isinstance(target, nn.Conv2d):
            target.weight.copy_(weight[:, :, None, None])
            target.bias.copy_(layer.bias)
        else:  # GConv2d: W (o, 1, i(, e), 1, 1), B (1, o, 1, 1)
            target.W.copy_(weight.reshape(target.W.shape))
            target.B.copy_(layer.bias.view(target.B.shape))

    group = order > 1
    pointwise(reference.p, model.lift, False)
    for index, block in enumerate(model.blocks):
        pointwise(getattr(reference, f"mlp{index}").mlp1, block.mlp[0], group)
        pointwise(getattr(reference, f"mlp{index}").mlp2, block.mlp[2], group)
        pointwise(getattr(reference, f"w{index}"), block.skip, group)
        conv = getattr(reference, f"conv{index}")
        if not group:
            weight = torch.view_as_complex(block.conv.weight)  # (2m, m, in, out)
            m = weight.shape[1]
            conv.weights1.copy_(weight[m:].permute(2, 3, 0, 1))
            conv.weights2.copy_(weight[:m].permute(2, 3, 0, 1))
            continue
        a = block.conv.weight[:, :, _element_map(order)]  # (o, i, e, 2m-1, 2m-1)
        kernel = torch.complex((a + a.flip((-2, -1))) / 2, (a - a.flip((-2, -1))) / 2)[:, None]  # (o, 1, i, e, y, x)
        m = (kernel.shape[-1] + 1) // 2
        parameters = conv.conv.W
        parameters["00_modes"].copy_(kernel[..., m - 1:m, m - 1:m].real)
        parameters["y0_modes"].copy_(kernel[..., : m - 1, m - 1:m])
        parameters["yposx_modes"].copy_(kernel[..., m:])
    pointwise(reference.q.mlp1, model.project[0], group)
    pointwise(reference.q.mlp2, model.project[2], False)
    for module in reference.modules():  # GConv2d caches its expanded weight in eval mode
        if hasattr(module, "eval_build"):
            module.eval_build = True
    return reference

"""FNO and G-FNO models (Li et al., ICLR 2021; Helwig et al., "Group Equivariant Fourier Neural
Operators for Partial Differential Equations", ICML 2023), built from :mod:`.layers`.

All four share one body, the reference's (divelab AIRS ``OpenPDE/G-FNO``): grid features ->
pointwise lifting to ``width`` (regular) channels -> 4 Fourier blocks -> pointwise MLP
(width -> 4 width -> out) whose last map pools over the group. FNO uses the trivial group and
FNO's spectral layer; G-FNO the group layers, which make it equivariant to 90-degree rotations
(p4) and reflections (p4m) of the (x, y) plane as :func:`torch.rot90` and :func:`torch.flip`
apply them (about the centre of the array; see :mod:`.group`). The reference's ``symmetric``
grid feature (squared distance from the centre) is invariant under exactly these maps; with
``grid="none"`` the models are translation-equivariant as well, hence also equivariant to the
rotation about the origin, w[i, j] -> w[j, -i mod n].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from sciml.models.contract import Model, ModelOptions, Output, register_model
from sciml.models.gfno.group import PointGroup
from sciml.models.gfno.layers import FourierBlock, GridFeatures, GroupLinear, GroupMLP, GroupSpectralConv, SpectralConv

#: default widths (channels per group element): parameter counts close to FNO's, as the paper
WIDTHS = {2: {"trivial": 20, "p4": 10, "p4m": 7}, 3: {"trivial": 20, "p4": 11, "p4m": 7}}


class FourierNeuralOperator(nn.Module, Model):
    """The shared body: channels-last (B, *grid, in_channels) -> (B, *grid, out_channels).

    ``modes``: kept frequencies per grid axis (x, y[, t]); ``group``: "trivial" (FNO), "p4" or
    "p4m" acting on (x, y). ``time_padding`` zeros are appended to a third (time) axis after the
    lifting and cropped before the projection (the reference's ``time_pad`` for non-periodic time).
    Build the models below by name with ``build_model``.
    """

    model_name = "fno"
    inputs = "grid"
    outputs = {"field": Output("field", "")}

    def __init__(self, in_channels: int, out_channels: int, modes: Tuple[int, ...], group: str, width: int,
                 blocks: int, grid: str, norm: bool, time_padding: int = 0):
        super().__init__()
        self.group = PointGroup(group)
        if self.group.order > 1 and grid == "cartesian":
            raise ValueError("the cartesian grid feature breaks the group's symmetry; use 'symmetric' or 'none'")
        self.modes = tuple(modes)
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.time_padding = time_padding
        self.grid = GridFeatures(grid, len(modes))
        g = self.group
        self.lift = GroupLinear(in_channels + self.grid.channels, width, g, input="trivial")

        def conv():
            return GroupSpectralConv(width, width, modes, g) if g.order > 1 else SpectralConv(width, width, modes)

        self.blocks = nn.ModuleList(FourierBlock(conv(), width, g, norm, activation=i < blocks - 1) for i in range(blocks))
        self.project = GroupMLP(width, 4 * width, out_channels, g, output="trivial")

    @property
    def symmetry(self) -> str:
        """The group the model is equivariant to: "trivial", "p4" or "p4m"."""
        return self.group.name

    @property
    def space_time(self) -> bool:
        """True for the 3D (space + time) models, which predict all steps at once."""
        return len(self.modes) == 3

    def check_input(self, x: torch.Tensor) -> None:
        """ValueError for a wrong rank or channel count, a non-square plane for a group model, too few
        grid points for the modes, or non-finite values."""
        dims = len(self.modes)
        layout = "(batch, x, y, t_in)" if dims == 2 else "(batch, x, y, t, channels)"
        if x.dim() != dims + 2:
            raise ValueError(f"{self.model_name} expects {layout}, a {dims + 2}-d tensor; got shape {tuple(x.shape)}")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"{self.model_name} expects {self.in_channels} input channels (last axis of {layout}), "
                             f"got shape {tuple(x.shape)}")
        grid = x.shape[1:-1]
        if self.group.order > 1 and grid[0] != grid[1]:
            raise ValueError(f"{self.model_name}: the group {self.group.name} needs a square (x, y) grid, got {grid[0]} x {grid[1]}")
        for axis, (n, m) in enumerate(zip(grid[:2], self.modes)):
            if n < 2 * m:
                raise ValueError(f"{self.model_name}: {n} grid points along {'xy'[axis]} are fewer than twice the {m} modes")
        if dims == 3 and (grid[2] + self.time_padding) // 2 + 1 < self.modes[2]:
            raise ValueError(f"{self.model_name}: {grid[2]} time steps (+ {self.time_padding} padding) are too few "
                             f"for {self.modes[2]} time modes (need at least {2 * self.modes[2] - 2})")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{self.model_name}: the input contains NaN or infinite values")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.grid(x).movedim(-1, 1)
        x = self.lift(x)
        if self.time_padding:
            x = nn.functional.pad(x, (0, self.time_padding))
        for block in self.blocks:
            x = block(x)
        if self.time_padding:
            x = x[..., : -self.time_padding]
        return self.project(x).movedim(1, -1)


@dataclass(frozen=True)
class FNO2dOptions(ModelOptions):
    """Options of :class:`FNO2d`: ``t_in`` input and ``t_out`` output steps, ``width`` channels
    (per group element), ``modes`` kept frequencies per axis, ``blocks`` Fourier blocks, ``grid``
    feature ("symmetric", "cartesian" or "none"), instance ``norm``."""

    t_in: int = 10
    t_out: int = 1
    width: int = 20
    modes: int = 12
    blocks: int = 4
    grid: str = "symmetric"
    norm: bool = True


@dataclass(frozen=True)
class GFNO2dOptions(FNO2dOptions):
    """Options of :class:`GFNO2d`: those of :class:`FNO2dOptions` and the ``group`` ("p4" or
    "p4m"); ``width`` None takes the paper's width for the group."""

    group: str = "p4"
    width: Optional[int] = None


@dataclass(frozen=True)
class FNO3dOptions(ModelOptions):
    """Options of :class:`FNO3d`: ``channels_in``/``channels_out`` per grid point, ``width``,
    ``modes`` in x and y and ``time_modes`` in t, ``blocks``, ``grid`` feature, ``norm`` and
    ``time_padding`` (zeros appended to the time axis)."""

    channels_in: int = 10
    channels_out: int = 1
    width: int = 20
    modes: int = 8
    time_modes: int = 6
    blocks: int = 4
    grid: str = "cartesian"
    norm: bool = False
    time_padding: int = 0


@dataclass(frozen=True)
class GFNO3dOptions(FNO3dOptions):
    """Options of :class:`GFNO3d`: those of :class:`FNO3dOptions` and the ``group``; default grid
    ``symmetric`` and ``width`` None for the paper's width."""

    group: str = "p4"
    width: Optional[int] = None
    grid: str = "symmetric"


def _group_and_width(options: "FNO2dOptions | FNO3dOptions", dims: int) -> Tuple[str, int]:
    """The group of a model's options ("trivial" for FNO) and its width (the paper's for None)."""
    if not isinstance(options, (GFNO2dOptions, GFNO3dOptions)):
        return "trivial", options.width
    if options.group not in ("p4", "p4m"):
        raise ValueError(f"G-FNO groups are 'p4' and 'p4m', got {options.group!r}")
    return options.group, WIDTHS[dims][options.group] if options.width is None else options.width


@register_model("fno2d", FNO2dOptions, small=FNO2dOptions(width=8, modes=4))
class FNO2d(FourierNeuralOperator):
    """FNO-2D for time stepping: (batch, x, y, t_in) -> (batch, x, y, t_out), the next ``t_out``
    steps from the last ``t_in``, at any resolution with at least ``2 modes`` points per axis.

    Defaults are the reference's NS setup: width 20, 12 modes, 4 blocks, instance norm, the
    ``symmetric`` grid feature (928,641 parameters, the paper's 0.93M).
    """

    def __init__(self, options: FNO2dOptions = FNO2dOptions()):
        o = options
        group, width = _group_and_width(o, 2)
        super().__init__(o.t_in, o.t_out, (o.modes,) * 2, group, width, o.blocks, o.grid, o.norm)
        self.options = o


@register_model("gfno2d_p4", GFNO2dOptions, fixed={"group": "p4"}, small=GFNO2dOptions(group="p4", width=4, modes=4))
@register_model("gfno2d_p4m", GFNO2dOptions, fixed={"group": "p4m"}, small=GFNO2dOptions(group="p4m", width=4, modes=4))
class GFNO2d(FNO2d):
    """G-FNO-2D: :class:`FNO2d` equivariant to the group ``"p4"`` (rotations by 90 degrees) or
    ``"p4m"`` (and reflections) of the (x, y) plane; the grid must be square.

    Default widths as the paper: p4 10 (853,121 parameters, 0.85M), p4m 7 (835,969, 0.84M).
    """

    def __init__(self, options: GFNO2dOptions = GFNO2dOptions()):
        super().__init__(options)
        self.model_name = f"gfno2d_{options.group}"


@register_model("fno3d", FNO3dOptions, small=FNO3dOptions(width=8, modes=4, time_modes=3))
class FNO3d(FourierNeuralOperator):
    """FNO-3D in space and time: (batch, x, y, t, channels_in) -> (batch, x, y, t, channels_out),
    e.g. the first 10 steps repeated along t in, the next t steps out, in one shot.

    Defaults are the reference's NS setup: width 20, 8 modes in x and y, 6 in t, 4 blocks, no
    norm, the ``cartesian`` grid (x, y, t) as the reference's FNO3d (4,922,281 parameters).
    """

    def __init__(self, options: FNO3dOptions = FNO3dOptions()):
        o = options
        group, width = _group_and_width(o, 3)
        super().__init__(o.channels_in, o.channels_out, (o.modes, o.modes, o.time_modes), group, width, o.blocks,
                         o.grid, o.norm, o.time_padding)
        self.options = o


@register_model("gfno3d_p4", GFNO3dOptions, fixed={"group": "p4"},
                small=GFNO3dOptions(group="p4", width=4, modes=4, time_modes=3))
@register_model("gfno3d_p4m", GFNO3dOptions, fixed={"group": "p4m"},
                small=GFNO3dOptions(group="p4m", width=4, modes=4, time_modes=3))
class GFNO3d(FNO3d):
    """G-FNO-3D: :class:`FNO3d` equivariant to ``"p4"`` or ``"p4m"`` acting on (x, y) (time is not
    transformed); the (x, y) grid must be square. Default grid ``symmetric`` (distance from the
    centre and t) and widths as the paper: p4 11 (4,799,708 parameters), p4m 7 (3,887,304).
    """

    def __init__(self, options: GFNO3dOptions = GFNO3dOptions()):
        super().__init__(options)
        self.model_name = f"gfno3d_{options.group}"

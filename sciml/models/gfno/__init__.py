"""FNO and G-FNO (group-equivariant Fourier neural operators for p4 and p4m) in 2D and 3D."""

from sciml.models.gfno.group import PointGroup
from sciml.models.gfno.layers import (
    FourierBlock,
    GridFeatures,
    GroupInstanceNorm,
    GroupLinear,
    GroupMLP,
    GroupSpectralConv,
    SpectralConv,
    SpectralConvolution,
)
from sciml.models.gfno.model import (
    FNO2d,
    FNO2dOptions,
    FNO3d,
    FNO3dOptions,
    FourierNeuralOperator,
    GFNO2d,
    GFNO2dOptions,
    GFNO3d,
    GFNO3dOptions,
)

__all__ = [
    "PointGroup",
    "GridFeatures",
    "GroupLinear",
    "GroupMLP",
    "GroupInstanceNorm",
    "SpectralConvolution",
    "SpectralConv",
    "GroupSpectralConv",
    "FourierBlock",
    "FourierNeuralOperator",
    "FNO2d",
    "FNO2dOptions",
    "GFNO2d",
    "GFNO2dOptions",
    "FNO3d",
    "FNO3dOptions",
    "GFNO3d",
    "GFNO3dOptions",
]

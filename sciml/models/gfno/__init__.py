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
from sciml.models.gfno.model import FNO2d, FNO3d, FourierNeuralOperator, GFNO2d, GFNO3d

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
    "GFNO2d",
    "FNO3d",
    "GFNO3d",
]

"""Numerical kernels on plain tensors (no graphs, no models).

- ``scatter``: sum/mean/max reductions over an index.
- Drop-ins for e3nn (same arguments, weights, state dicts, outputs): the tensor products,
  ``Linear``, ``spherical_harmonics``/``SphericalHarmonics``; ``patch_e3nn()`` swaps them into an
  imported e3nn so that e3nn-based code (MACE, NequIP, ...) runs on sciml's kernels.
- Tensor products of irreps, equal to e3nn's (``TensorProduct`` and its builders, the fused
  ``tensor_product_conv``), with reference, CPU (compiled C), Triton and CUDA backends.
- SO(3) tools in e3nn's basis: ``spherical_harmonics`` (e3nn's arguments and meaning),
  ``spherical_harmonics_upto`` (all degrees 0..lmax, sciml's edge harmonics), ``wigner_D`` / ``wigner_D_blocks``,
  ``edge_rotation``; the eSCN/EquiformerV2 SO(2) ops (``SO2Linear``, ``SO2Convolution``,
  m-major reordering); the Gaunt tensor product.

Submodules share names with some functions (``sciml.ops.spherical_harmonics`` is the function
here): import helpers with ``from sciml.ops.spherical_harmonics import ...``.
"""

from sciml.ops.e3nn_patch import patch_e3nn
from sciml.ops.edge_frames import EdgeFrames
from sciml.ops.gaunt import GauntTensorProduct, gaunt_coefficients
from sciml.ops.linear import Linear
from sciml.ops.scatter import scatter, scatter_max, scatter_mean, scatter_sum
from sciml.ops.so2 import SO2Convolution, SO2Linear, from_m_major, to_m_major
from sciml.ops.spherical_harmonics import SphericalHarmonics, spherical_harmonics, spherical_harmonics_upto
from sciml.ops.tensor_product import (
    ChannelwiseTensorProduct,
    ElementwiseTensorProduct,
    FullTensorProduct,
    FullyConnectedTensorProduct,
    TensorProduct,
    TensorSquare,
    tensor_product_conv,
)
from sciml.ops.wigner import edge_rotation, wigner_D, wigner_D_blocks

__all__ = [
    "scatter", "scatter_sum", "scatter_mean", "scatter_max",
    "TensorProduct", "FullyConnectedTensorProduct", "ChannelwiseTensorProduct", "tensor_product_conv",
    "ElementwiseTensorProduct", "FullTensorProduct", "TensorSquare",
    "spherical_harmonics", "spherical_harmonics_upto", "SphericalHarmonics", "wigner_D", "wigner_D_blocks", "edge_rotation",
    "SO2Linear", "SO2Convolution", "EdgeFrames", "to_m_major", "from_m_major",
    "GauntTensorProduct", "gaunt_coefficients", "Linear", "patch_e3nn",
]

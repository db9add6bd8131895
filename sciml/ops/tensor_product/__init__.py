"""Tensor products of irreps (e3nn-compatible), their backends and the fused convolution."""

from sciml.ops.tensor_product.conv import tensor_product_conv
from sciml.ops.tensor_product.module import TensorProduct
from sciml.ops.tensor_product.variants import (
    ChannelwiseTensorProduct,
    ElementwiseTensorProduct,
    FullTensorProduct,
    FullyConnectedTensorProduct,
    TensorSquare,
)

__all__ = [
    "tensor_product_conv", "TensorProduct", "FullyConnectedTensorProduct", "ChannelwiseTensorProduct",
    "ElementwiseTensorProduct", "FullTensorProduct", "TensorSquare",
]

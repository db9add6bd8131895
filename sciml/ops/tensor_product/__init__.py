"""Tensor products of irreps (e3nn-compatible), their backends and the fused convolution."""

from sciml.ops.tensor_product.conv import tensor_product_conv
from sciml.ops.tensor_product.module import ChannelwiseTensorProduct, FullyConnectedTensorProduct, TensorProduct

__all__ = ["tensor_product_conv", "TensorProduct", "FullyConnectedTensorProduct", "ChannelwiseTensorProduct"]

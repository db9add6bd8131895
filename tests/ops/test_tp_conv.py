"""tensor_product_conv: the fused gather -> product -> scatter equals the unfused e3nn computation."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from sciml.ops import ChannelwiseTensorProduct, FullyConnectedTensorProduct, TensorProduct, tensor_product_conv
from sciml.ops.tensor_product import cpu
from tp_cases import e3nn_module

BACKENDS = ["reference", "torch"] + (["cpu"] if cpu.available() else [])
NUM_NODES = 7


def _graph(num_edges: int = 23, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, NUM_NODES - 1, (2, num_edges), generator=generator)  # node 6 receives nothing
    return edge_index, generator


def _products():
    node, sh = o3.Irreps("3x0e+3x1o+3x2e"), o3.Irreps.spherical_harmonics(2)
    channelwise = ChannelwiseTensorProduct(node, sh)  # fused: per-edge weights, sender gathered in-kernel
    fully_connected = FullyConnectedTensorProduct(node, sh, "2x0e+2x1o")  # uvw: per-edge messages, then scatter
    swapped = TensorProduct("1x1o", "2x0e+2x1o", "2x1o+2x0e", [(0, 0, 0, "uvv", True), (0, 1, 1, "uvv", True)],
                            shared_weights=False)  # operand a holds edge data: x1 gathered first
    return {"channelwise": channelwise, "fully_connected": fully_connected, "swapped": swapped}


@pytest.mark.parametrize("name", ["channelwise", "fully_connected", "swapped"])
@pytest.mark.slow
def test_conv_equals_gather_product_scatter(name):
    tp = _products()[name].double()
    e3nn_tp = e3nn_module(
        lambda: o3.TensorProduct(tp.irreps_in1, tp.irreps_in2, tp.irreps_out, tp.raw_instructions,
                                 shared_weights=tp.shared_weights, internal_weights=tp.internal_weights),
        torch.float64,
    )
    if tp.internal_weights:
        with torch.no_grad():
            e3nn_tp.weight.copy_(tp.weight)
    edge_index, generator = _graph()
    num_edges = edge_index.shape[1]
    nodes = torch.randn(NUM_NODES, tp.irreps_in1.dim, generator=generator, dtype=torch.float64, requires_grad=True)
    attrs = torch.randn(num_edges, tp.irreps_in2.dim, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = None if tp.shared_weights else torch.randn(num_edges, tp.weight_numel, generator=generator, dtype=torch.float64, requires_grad=True)
    leaves = [t for t in (nodes, attrs, weights) if t is not None]

    messages = e3nn_tp(nodes[edge_index[1]], attrs) if weights is None else e3nn_tp(nodes[edge_index[1]], attrs, weights)
    expected = torch.zeros(NUM_NODES, tp.irreps_out.dim, dtype=torch.float64).index_add(0, edge_index[0], messages)
    probe = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    expected_grads = torch.autograd.grad((expected * probe).sum(), leaves)
    for backend in BACKENDS:
        tp.backend = backend
        out = tensor_product_conv(nodes, attrs, weights, edge_index, tp)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, msg=backend)
        for got, want in zip(torch.autograd.grad((out * probe).sum(), leaves), expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=backend)
    assert torch.all(expected[NUM_NODES - 1] == 0)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no C compiler for the cpu kernel")
@pytest.mark.slow
def test_fused_conv_is_deterministic_and_differentiable_twice():
    tp = _products()["channelwise"].double()
    tp.backend = "cpu"
    edge_index, generator = _graph(num_edges=12, seed=1)
    nodes = torch.randn(NUM_NODES, tp.irreps_in1.dim, generator=generator, dtype=torch.float64, requires_grad=True)
    attrs = torch.randn(12, tp.irreps_in2.dim, generator=generator, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(12, tp.weight_numel, generator=generator, dtype=torch.float64, requires_grad=True)
    conv = lambda n, a, w: tensor_product_conv(n, a, w, edge_index, tp)  # noqa: E731
    assert torch.equal(conv(nodes, attrs, weights), conv(nodes, attrs, weights))
    assert torch.autograd.gradcheck(conv, (nodes, attrs, weights))
    assert torch.autograd.gradgradcheck(conv, (nodes, attrs, weights))


def test_conv_bad_input_is_a_clear_error():
    tp = _products()["channelwise"]
    edge_index, _ = _graph()
    nodes, attrs = torch.randn(NUM_NODES, tp.irreps_in1.dim), torch.randn(23, 9)
    weights = torch.randn(23, tp.weight_numel)
    with pytest.raises(ValueError, match=r"edge_index must have shape \(2, E\)"):
        tensor_product_conv(nodes, attrs, weights, edge_index[0], tp)
    with pytest.raises(ValueError, match=r"edge_attrs must be \(23, 9\)"):
        tensor_product_conv(nodes, attrs[:, :4], weights, edge_index, tp)
    with pytest.raises(ValueError, match=r"edge_weights must be \(23, 33\), got None"):
        tensor_product_conv(nodes, attrs, None, edge_index, tp)
    with pytest.raises(ValueError, match="refers to nodes outside"):
        tensor_product_conv(nodes[:3], attrs, weights, edge_index, tp)

import pytest
import torch

from sciml.ops import scatter
from sciml.ops.scatter import available_backends


def loop_reference(src, index, size, reduce):
    out = torch.zeros((size,) + tuple(src.shape[1:]), dtype=src.dtype)
    for k in range(size):
        rows = src[index == k]
        if len(rows):
            out[k] = {"sum": rows.sum(0), "mean": rows.mean(0), "max": rows.max(0).values}[reduce]
    return out


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(200, 4, 3, generator=g, dtype=torch.float64)
    index = torch.randint(0, 30, (200,), generator=g)
    index[index == 7] = 8  # an empty segment
    return src, index


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_native_matches_loop(data, reduce):
    src, index = data
    out = scatter(src, index, 31, reduce, backend="torch")
    assert torch.allclose(out, loop_reference(src, index, 31, reduce))
    assert torch.all(out[7] == 0) and torch.all(out[30] == 0)


@pytest.mark.skipif("torch_scatter" not in available_backends(), reason="torch-scatter is not installed")
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_backends_agree_with_gradients(data, reduce):
    src, index = data
    results = []
    for backend in ("torch", "torch_scatter"):
        x = src.clone().requires_grad_(True)
        out = scatter(x, index, 31, reduce, backend=backend)
        (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad))
    assert torch.allclose(results[0][0], results[1][0])
    assert torch.allclose(results[0][1], results[1][1])


def test_errors_name_the_problem(data):
    src, index = data
    with pytest.raises(ValueError, match="unknown reduction"):
        scatter(src, index, 31, "median")
    with pytest.raises(ValueError, match="index must have shape"):
        scatter(src, index[:-1], 31)
    with pytest.raises(ValueError, match="unknown scatter backend"):
        scatter(src, index, 31, backend="cuda")

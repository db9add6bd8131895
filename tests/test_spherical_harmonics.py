import numpy as np
import pytest
import torch
from e3nn import o3

from sciml.ops import SphericalHarmonics, spherical_harmonics
from sciml.ops.spherical_harmonics import cg_spherical_harmonics

NORMALIZATIONS = ["component", "norm", "integral"]


def vectors(n=40, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, generator=g, dtype=dtype) * 1.7).requires_grad_(True)


def e3nn_sh(ls, v, normalize, normalization):
    ls = list(range(ls + 1)) if isinstance(ls, int) else list(ls)
    return o3.spherical_harmonics(ls, v, normalize, normalization)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("ls", [1, 2, 3, 5, 8, [3, 1], [2, 2, 0]])
def test_values_and_gradients_equal_e3nn(ls, normalize, normalization):
    v1, v2 = vectors(), vectors()
    ours, theirs = spherical_harmonics(ls, v1, normalize, normalization), e3nn_sh(ls, v2, normalize, normalization)
    scale = theirs.abs().max()
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-12 * scale
    weights = torch.randn_like(ours)
    (g1,) = torch.autograd.grad((ours * weights).sum(), v1)
    (g2,) = torch.autograd.grad((theirs * weights).sum(), v2)
    assert (g1 - g2).abs().max() <= 1e-12 * g2.abs().max()


@pytest.mark.parametrize("normalize", [True, False])
def test_second_derivatives_equal_e3nn(normalize):
    v1, v2 = vectors(12), vectors(12)
    weights, probe = torch.randn(12, 25, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    grads = []
    for fn, v in ((spherical_harmonics, v1), (o3.spherical_harmonics, v2)):
        y = fn(list(range(5)), v, normalize, "component")
        (g,) = torch.autograd.grad((y * weights).sum(), v, create_graph=True)
        (h,) = torch.autograd.grad((g * probe).sum(), v)
        grads.append((g, h))
    (g1, h1), (g2, h2) = grads
    assert (g1 - g2).abs().max() <= 1e-12 * g2.abs().max()
    assert (h1 - h2).abs().max() <= 1e-11 * h2.abs().max()


def test_float32_accuracy_and_gradient():
    v64 = vectors(200)
    v32 = v64.detach().float().requires_grad_(True)
    ref = e3nn_sh(8, v64, True, "component")
    ours = spherical_harmonics(8, v32)
    assert ours.dtype == torch.float32
    assert (ours.double() - ref).abs().max() <= 2e-5 * ref.abs().max()
    weights = torch.randn(ref.shape, dtype=torch.float64)
    (g64,) = torch.autograd.grad((ref * weights).sum(), v64)
    (g32,) = torch.autograd.grad((ours * weights.float()).sum(), v32)
    assert (g32.double() - g64).abs().max() <= 2e-5 * g64.abs().max()


def test_batch_shape_module_and_zero_vectors():
    v = torch.randn(2, 5, 3, dtype=torch.float64)
    v[0, 0] = 0.0
    module = SphericalHarmonics(3, normalize=True, normalization="norm")
    out = module(v)
    assert out.shape == (2, 5, 16) and module.dim == 16
    assert torch.equal(out, spherical_harmonics(3, v, True, "norm"))
    assert torch.allclose(out, e3nn_sh(3, v, True, "norm"), atol=1e-13)
    assert torch.equal(out[0, 0], torch.tensor([1.0] + [0.0] * 15, dtype=torch.float64))  # as e3nn


def test_polar_axis_is_y_and_signs():
    # On +y only m = 0 is non-zero, with value sqrt(2l+1) ("component"), for every degree.
    y = spherical_harmonics(8, torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64))[0]
    for l in range(9):
        block = y[l * l : (l + 1) ** 2]
        assert torch.allclose(block[l], torch.tensor(float(2 * l + 1) ** 0.5, dtype=torch.float64))
        assert block.abs().sum() - block[l].abs() < 1e-12
    assert torch.allclose(
        spherical_harmonics([1], torch.tensor([[1.0, 2.0, 3.0]]), False), 3**0.5 * torch.tensor([[1.0, 2.0, 3.0]])
    )


def test_clebsch_gordan_reference_matches_e3nn():
    points = np.random.default_rng(0).normal(size=(10, 3))
    ours = np.concatenate(cg_spherical_harmonics(6, points), axis=1)
    theirs = e3nn_sh(6, torch.tensor(points), False, "component").numpy()
    assert np.abs(ours - theirs).max() < 1e-12 * np.abs(theirs).max()


@pytest.mark.parametrize(
    "args, match",
    [
        ((-1, torch.zeros(2, 3)), "lmax must be >= 0"),
        ((17, torch.zeros(2, 3)), "0..16"),
        (([], torch.zeros(2, 3)), "empty"),
        ((2, torch.zeros(2, 4)), r"shape \(\.\.\., 3\)"),
        ((2, torch.zeros(2, 3, dtype=torch.int64)), "floating-point"),
    ],
)
def test_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        spherical_harmonics(*args)


def test_bad_normalization_raises():
    with pytest.raises(ValueError, match="unknown normalization"):
        spherical_harmonics(2, torch.zeros(2, 3), normalization="unit")
    with pytest.raises(ValueError, match="unknown normalization"):
        SphericalHarmonics(2, normalization="unit")

"""Gaunt tensor product: coefficients, the Fourier route, the layer's equivariance and gradients."""

import math

import numpy as np
import pytest
import torch
from e3nn import o3

from sciml.ops.irreps import default_dtype
from sciml.ops import GauntTensorProduct, gaunt_coefficients
from sciml.ops import gaunt as gaunt_module
from sciml.ops.gaunt import (
    channels_to_mul_ir,
    fourier_product,
    fourier_to_sh,
    gaunt_product,
    mul_ir_to_channels,
    select_method,
    sh_to_fourier,
)
from sciml.testing import random_rotation
from sciml.testing.irreps import assert_irreps_equivariant

F64 = torch.float64
EXACT_METHODS = ("fourier", "grid", "dense", "auto")


def sh(lmax, xyz, normalization="integral"):
    """e3nn's real SH of degrees 0..lmax at unit vectors xyz (N, 3) -> (N, (lmax+1)**2)."""
    return o3.spherical_harmonics(list(range(lmax + 1)), xyz, normalize=True, normalization=normalization)


def contraction(x1, x2, lmax_out):
    """The reference: plain contraction with the Gaunt tensor (integral normalization)."""
    l1, l2 = math.isqrt(x1.shape[-1]) - 1, math.isqrt(x2.shape[-1]) - 1
    return torch.einsum("ijk,...i,...j->...k", gaunt_coefficients(l1, l2, lmax_out), x1, x2)


def three_j_000(l1, l2, l3):
    """Wigner 3j symbol (l1 l2 l3; 0 0 0), closed form (Racah), 0 when l1+l2+l3 is odd."""
    j = l1 + l2 + l3
    if j % 2 or l3 < abs(l1 - l2) or l3 > l1 + l2:
        return 0.0
    g, f = j // 2, math.factorial
    root = math.sqrt(f(j - 2 * l1) * f(j - 2 * l2) * f(j - 2 * l3) / f(j + 1))
    return (-1) ** g * root * f(g) / (f(g - l1) * f(g - l2) * f(g - l3))


def block(table, l1, l2, l3):
    return table[l1 * l1 : (l1 + 1) ** 2, l2 * l2 : (l2 + 1) ** 2, l3 * l3 : (l3 + 1) ** 2]


# --------------------------------------------------------------------------------------------
# Gaunt coefficients
# --------------------------------------------------------------------------------------------


def test_gaunt_coefficients_match_brute_force_quadrature_and_selection_rules():
    l1, l2, l3 = 3, 4, 5
    table = gaunt_coefficients(l1, l2, l3)
    # independent: e3nn's own SH on a much finer Gauss-Legendre x uniform grid
    z, w = np.polynomial.legendre.leggauss(30)
    phi = 2 * np.pi * np.arange(64) / 64
    beta, alpha = torch.tensor(np.arccos(z)).repeat_interleave(64), torch.tensor(phi).repeat(30)
    weights = torch.tensor(np.repeat(w, 64) * 2 * np.pi / 64)
    xyz = o3.angles_to_xyz(alpha, beta)
    brute = torch.einsum("q,qi,qj,qk->ijk", weights, sh(l1, xyz), sh(l2, xyz), sh(l3, xyz))
    assert (table - brute).abs().max() < 1e-13
    assert table.abs().max() > 0.1
    for a in range(l1 + 1):
        for b in range(l2 + 1):
            for c in range(l3 + 1):
                if (a + b + c) % 2 or c < abs(a - b) or c > a + b:
                    assert torch.all(block(table, a, b, c) == 0), (a, b, c)  # exact zeros
                    assert block(brute, a, b, c).abs().max() < 1e-13
                else:
                    assert block(table, a, b, c).abs().max() > 1e-3, (a, b, c)
    # symmetric in its three arguments (same degrees)
    sym = gaunt_coefficients(3, 3, 3)
    assert torch.allclose(sym, sym.permute(1, 0, 2)) and torch.allclose(sym, sym.permute(2, 1, 0))


@pytest.mark.slow
def test_gaunt_coefficients_are_the_wigner_3j_times_the_derived_constant():
    lmax = 5
    table = gaunt_coefficients(lmax, lmax, lmax)
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
                w3j = o3.wigner_3j(l1, l2, l3, dtype=F64)
                g = block(table, l1, l2, l3)
                if (l1 + l2 + l3) % 2:
                    assert w3j.abs().max() > 0.1 and torch.all(g == 0)  # CG path Gaunt cannot express
                    continue
                c = math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1) / (4 * math.pi)) * abs(three_j_000(l1, l2, l3))
                assert (g - c * w3j).abs().max() < 1e-13, (l1, l2, l3)


def test_component_normalization_scales_by_4pi_powers():
    gi, gc = gaunt_coefficients(2, 2, 3), gaunt_coefficients(2, 2, 3, normalization="component")
    assert torch.allclose(gc, gi * (4 * math.pi) ** 1.5)
    assert gaunt_coefficients(1, 1, 1, dtype=torch.float32).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Fourier route
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lmax", [0, 1, 3, 6])
def test_sh_to_fourier_is_the_trigonometric_polynomial_of_the_sh(lmax):
    g = torch.Generator().manual_seed(lmax)
    x = torch.randn(4, (lmax + 1) ** 2, generator=g, dtype=F64)
    spectrum = sh_to_fourier(x)
    assert spectrum.shape == (4, 2 * lmax + 1, 2 * lmax + 1) and spectrum.is_complex()
    # theta runs over the whole torus [0, 2 pi): the continuation is the same polynomial in xyz
    theta, phi = (torch.rand(7, generator=g, dtype=F64) * 2 * math.pi for _ in range(2))
    u = torch.arange(-lmax, lmax + 1, dtype=F64)
    waves = torch.exp(1j * (u[None, :, None] * theta[:, None, None] + u[None, None, :] * phi[:, None, None]))
    values = torch.einsum("buv,puv->bp", spectrum, waves)
    expected = x @ sh(lmax, o3.angles_to_xyz(phi, theta)).T
    assert values.imag.abs().max() < 1e-12 and (values.real - expected).abs().max() < 1e-12
    # sparse change of basis: coefficient (l, m) only reaches the columns v = +-m
    for i, m in enumerate(int(m) for l in range(lmax + 1) for m in range(-l, l + 1)):
        unit = torch.zeros((lmax + 1) ** 2, dtype=F64)
        unit[i] = 1
        cols = sh_to_fourier(unit).abs().sum(0)
        assert set(torch.nonzero(cols).flatten().tolist()) == {lmax + m, lmax - m}


@pytest.mark.parametrize("lmax", range(7))
def test_sh_fourier_sh_round_trip_is_the_identity(lmax):
    x = torch.randn(3, 2, (lmax + 1) ** 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    spectrum = sh_to_fourier(x)
    assert (fourier_to_sh(spectrum, lmax) - x).abs().max() < 1e-12
    higher = fourier_to_sh(spectrum, lmax + 2)  # nothing above the input degree
    assert (higher[..., : x.shape[-1]] - x).abs().max() < 1e-12 and higher[..., x.shape[-1] :].abs().max() < 1e-12
    assert (fourier_to_sh(spectrum, max(lmax - 1, 0)) - x[..., : lmax * lmax or 1]).abs().max() < 1e-12


def test_fourier_product_is_the_linear_convolution_and_projects_to_the_gaunt_product():
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(2, 9, generator=g, dtype=F64), torch.randn(2, 16, generator=g, dtype=F64)
    s1, s2 = sh_to_fourier(x1), sh_to_fourier(x2)
    product = fourier_product(s1, s2)
    assert product.shape == (2, 11, 11)
    direct = torch.zeros_like(product)
    for a in range(5):
        for b in range(5):
            direct[:, a : a + 7, b : b + 7] += s1[:, a, b, None, None] * s2
    assert (product - direct).abs().max() < 1e-12
    assert (fourier_to_sh(product, 5) - contraction(x1, x2, 5)).abs().max() < 1e-12


# --------------------------------------------------------------------------------------------
# the product: every method equals the contraction with the Gaunt coefficients
# --------------------------------------------------------------------------------------------

DEGREES = [(l, l, l) for l in range(1, 7)]
DEGREES += [(1, 3, 2), (3, 1, 4), (2, 5, 7), (4, 0, 4), (0, 3, 1), (3, 3, 0), (2, 2, 6)]


@pytest.mark.parametrize("lmax1,lmax2,lmax_out", DEGREES)
def test_every_method_equals_the_gaunt_contraction(lmax1, lmax2, lmax_out):
    g = torch.Generator().manual_seed(lmax1 * 100 + lmax2 * 10 + lmax_out)
    x1 = torch.randn(3, 4, (lmax1 + 1) ** 2, generator=g, dtype=F64)
    x2_shared = torch.randn(3, 1, (lmax2 + 1) ** 2, generator=g, dtype=F64)
    x2_full = torch.randn(3, 4, (lmax2 + 1) ** 2, generator=g, dtype=F64)
    for x2 in (x2_shared, x2_full):
        reference = contraction(x1, x2, lmax_out)
        for method in EXACT_METHODS:
            out = gaunt_product(x1, x2, lmax_out, method=method)
            assert out.shape == reference.shape
            assert (out - reference).abs().max() < 1e-10 * (1 + reference.abs().max()), method


def test_product_of_sphere_functions_pointwise():
    """f1(r) f2(r) equals the Gaunt output evaluated at r once lmax_out >= lmax1 + lmax2."""
    g = torch.Generator().manual_seed(3)
    r = torch.randn(50, 3, generator=g, dtype=F64)
    for normalization in ("integral", "component"):
        x1, x2 = torch.randn(50, 16, generator=g, dtype=F64), torch.randn(50, 25, generator=g, dtype=F64)
        f1 = (x1 * sh(3, r, normalization)).sum(-1)
        f2 = (x2 * sh(4, r, normalization)).sum(-1)
        for lmax_out in (7, 9):
            for method in ("fourier", "grid", "dense"):
                out = gaunt_product(x1, x2, lmax_out, normalization=normalization, method=method)
                assert ((out * sh(lmax_out, r, normalization)).sum(-1) - f1 * f2).abs().max() < 1e-11
    # below lmax1 + lmax2 it is the truncation: the high degrees of the full product
    full = gaunt_product(x1, x2, 7)
    assert torch.allclose(gaunt_product(x1, x2, 4), full[:, :25])


def test_auto_picks_dense_for_small_shared_grid_in_between_and_fft_for_high_degrees():
    assert select_method(2, 2, 2, x2_shared_by=16) == "dense"
    assert select_method(6, 6, 6, x2_shared_by=1) == "grid"
    assert select_method(24, 24, 24) == "fourier"
    assert GauntTensorProduct(2, 2, 2, 16, weights="degree").resolved_method(shared_x2=True) == "dense"
    assert GauntTensorProduct(2, 2, 2, 16, method="fourier").resolved_method() == "fourier"


# --------------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------------


def _layer(lmax1, lmax2, lmax_out, channels, seed=0, **kwargs):
    layer = GauntTensorProduct(lmax1, lmax2, lmax_out, channels, **kwargs).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.5)
    return layer


@pytest.mark.parametrize("weights", ["channel", "degree", "none"])
@pytest.mark.parametrize("method", EXACT_METHODS)
def test_layer_is_the_weighted_channelwise_gaunt_product(weights, method):
    layer = _layer(2, 3, 4, 5, weights=weights, method=method)
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(2, 6, 9, 5, generator=g, dtype=F64)
    x2_shared, x2_full = torch.randn(2, 6, 16, generator=g, dtype=F64), torch.randn(2, 6, 16, 5, generator=g, dtype=F64)
    deg1, deg2 = (torch.arange(n).repeat_interleave(torch.arange(n) * 2 + 1) for n in (3, 4))
    w1 = layer.weight1[..., deg1] if layer.weight1 is not None else torch.ones(9, dtype=F64)
    w2 = layer.weight2[..., deg2] if layer.weight2 is not None else torch.ones(16, dtype=F64)
    w1, w2 = w1.reshape(-1, 9).T, w2.reshape(-1, 16).T  # (n, C or 1)
    for x2 in (x2_shared, x2_full):
        x2c = x2 if x2.ndim == 4 else x2[..., None]
        expected = torch.einsum("ijk,...ic,...jc->...kc", gaunt_coefficients(2, 3, 4), x1 * w1, x2c * w2)
        out = layer(x1, x2)
        assert out.shape == (2, 6, 25, 5)
        assert (out - expected).abs().max() < 1e-10


def sh_irreps(lmax, channels):
    """The irreps of ``channels`` copies of each degree 0..lmax of e3nn's harmonics (parity (-1)^l)."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


@pytest.mark.parametrize("method", ["fourier", "grid", "dense"])
def test_layer_is_o3_equivariant(method):
    """Rotating (or rotoreflecting) both inputs rotates the output: D_out f(x1, x2) = f(D1 x1, D2 x2)."""
    layer = _layer(3, 2, 4, 3, method=method)

    def product(x1, x2):  # on e3nn's flat features: 3 channels of degrees 0..3, one of 0..2 -> 3 of 0..4
        return channels_to_mul_ir(layer(mul_ir_to_channels(x1, 3, 3), x2))

    assert_irreps_equivariant(product, [sh_irreps(3, 3), sh_irreps(2, 1)], sh_irreps(4, 3), atol=1e-11)


@pytest.mark.parametrize("method", ["fourier", "grid", "dense"])
@pytest.mark.slow
def test_layer_gradcheck(method):
    layer = _layer(1, 2, 2, 2, method=method)
    g = torch.Generator().manual_seed(7)
    x1 = torch.randn(2, 4, 2, generator=g, dtype=F64, requires_grad=True)
    x2 = torch.randn(2, 9, generator=g, dtype=F64, requires_grad=True)

    def fn_params(a, b, p, q):  # the weights through a functional call, so gradcheck perturbs them too
        return torch.func.functional_call(layer, {"weight1": p, "weight2": q}, (a, b))

    p, q = (w.detach().clone().requires_grad_(True) for w in (layer.weight1, layer.weight2))
    assert torch.autograd.gradcheck(fn_params, (x1, x2, p, q))
    x2c = torch.randn(2, 9, 2, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(fn_params, (x1, x2c, p, q))


@pytest.mark.parametrize("method", ["fourier", "grid", "dense"])
@pytest.mark.parametrize("weights", ["channel", "degree"])
def test_blocked_evaluation_equals_one_pass_with_gradients(monkeypatch, method, weights):
    layer = _layer(2, 2, 3, 3, weights=weights, method=method)
    g = torch.Generator().manual_seed(9)
    x1 = torch.randn(37, 9, 3, generator=g, dtype=F64, requires_grad=True)
    x2 = torch.randn(37, 9, generator=g, dtype=F64, requires_grad=True)
    grad_out = torch.randn(37, 16, 3, generator=g, dtype=F64)
    inputs = [x1, x2] + list(layer.parameters())
    results = []
    for block in (1 << 30, 50):  # one pass; blocks of a few rows
        monkeypatch.setattr(gaunt_module, "_BLOCK_ELEMENTS", block)
        out = layer(x1, x2)
        results.append([out] + list(torch.autograd.grad(out, inputs, grad_out)))
    for a, b in zip(*results):
        assert (a - b).abs().max() < 1e-12


@pytest.mark.parametrize("method", ["fourier", "grid"])
@pytest.mark.slow
def test_layer_second_derivatives(method):
    """Double backward (forces in training need d/dx2 of a gradient) works through every op."""
    layer = _layer(1, 1, 2, 2, method=method)
    g = torch.Generator().manual_seed(10)
    x1 = torch.randn(2, 4, 2, generator=g, dtype=F64, requires_grad=True)
    x2 = torch.randn(2, 4, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: layer(a, b), (x1, x2))


@pytest.mark.slow
def test_layer_equals_e3nn_uvu_tensor_product_on_the_gaunt_paths():
    """With weights c(l1,l2,l3) w1 w2 / path_weight, e3nn's CG product is the Gaunt layer (the bench's baseline)."""
    from sciml.bench.gaunt import e3nn_gaunt_tensor_product

    g = torch.Generator().manual_seed(11)
    x1, x2 = torch.randn(6, 16, 3, generator=g, dtype=F64), torch.randn(6, 9, generator=g, dtype=F64)
    for weights in ("channel", "degree", "none"):
        layer = _layer(3, 2, 4, 3, weights=weights)
        with default_dtype(F64):
            tp = e3nn_gaunt_tensor_product(layer)
        expected = tp(channels_to_mul_ir(x1), x2)
        assert (channels_to_mul_ir(layer(x1, x2)) - expected).abs().max() < 1e-12
    assert len(tp.instructions) == sum(
        1 for a in range(4) for b in range(3) for c in range(abs(a - b), min(a + b, 4) + 1) if (a + b + c) % 2 == 0
    )


def test_mul_ir_adapters_follow_e3nn_layout():
    irreps = o3.Irreps("3x0e + 3x1o + 3x2e")
    x = torch.randn(5, irreps.dim, dtype=F64)
    y = mul_ir_to_channels(x, 2, 3)
    assert y.shape == (5, 9, 3)
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        blk = x[:, sl].reshape(5, mul, ir.dim)  # e3nn: [channel][m] inside a degree
        assert torch.equal(y[:, ir.l**2 : (ir.l + 1) ** 2, :], blk.transpose(1, 2))
    assert torch.equal(channels_to_mul_ir(y), x)
    # rotating the flat features with e3nn equals rotating each channel's SH coefficients
    rot = torch.tensor(random_rotation(np.random.default_rng(8)))
    flat_rot = x @ irreps.D_from_matrix(rot).T
    d_sh = o3.Irreps.spherical_harmonics(2).D_from_matrix(rot)  # same float32-accurate blocks as irreps'
    assert torch.allclose(mul_ir_to_channels(flat_rot, 2, 3), d_sh @ y, atol=1e-12)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_bad_input_raises_value_error_naming_the_problem():
    with pytest.raises(ValueError, match=r"degrees 0\.\.16"):
        gaunt_coefficients(17, 1, 1)
    with pytest.raises(ValueError, match="lmax1"):
        GauntTensorProduct(-1, 2, 2, 4)
    with pytest.raises(ValueError, match="lmax_out"):
        GauntTensorProduct(1, 2, 1.5, 4)
    with pytest.raises(ValueError, match="channels"):
        GauntTensorProduct(1, 1, 1, 0)
    with pytest.raises(ValueError, match="method"):
        GauntTensorProduct(1, 1, 1, 2, method="cuda")
    with pytest.raises(ValueError, match="normalization"):
        GauntTensorProduct(1, 1, 1, 2, normalization="norm")
    with pytest.raises(ValueError, match="weights"):
        GauntTensorProduct(1, 1, 1, 2, weights="path")
    layer = GauntTensorProduct(1, 2, 2, 4)
    with pytest.raises(ValueError, match=r"x1 must have shape \(\.\.\., 4, 4\)"):
        layer(torch.randn(3, 9, 4), torch.randn(3, 9))
    with pytest.raises(ValueError, match="x2 must have shape"):
        layer(torch.randn(3, 4, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="x2 must have shape"):
        layer(torch.randn(3, 4, 4), torch.randn(3, 9, 3))
    with pytest.raises(ValueError, match="do not broadcast"):
        layer(torch.randn(3, 4, 4), torch.randn(2, 9))
    with pytest.raises(ValueError, match="dtype"):
        layer(torch.randn(3, 4, 4), torch.randn(3, 9, dtype=F64))
    with pytest.raises(ValueError, match=r"not \(lmax\+1\)\*\*2"):
        gaunt_product(torch.randn(3, 5), torch.randn(3, 4), 2)
    with pytest.raises(ValueError, match="lmax_out"):
        gaunt_product(torch.randn(3, 4), torch.randn(3, 4), -1)
    with pytest.raises(ValueError, match="floating"):
        gaunt_product(torch.ones(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="lmax2"):
        gaunt_coefficients(1, -2, 1)
    with pytest.raises(ValueError, match="spectrum"):
        fourier_to_sh(torch.randn(3, 3), 1)
    with pytest.raises(ValueError, match="channels"):
        mul_ir_to_channels(torch.randn(2, 10), 1, 3)

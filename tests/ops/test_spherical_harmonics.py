import numpy as np
import pytest
import torch
from e3nn import o3

from sh_backends import backend, has_compiler  # noqa: F401  (backend is a fixture)
from sciml.ops import SphericalHarmonics, sh_codegen, spherical_harmonics, spherical_harmonics_upto
from sciml.ops.cbuild import kernel_name
from sciml.ops.sh_codegen import harmonics_c_source
from sciml.ops.sh_recurrence import cg_spherical_harmonics
from sciml.testing.irreps import assert_irreps_equivariant

NORMALIZATIONS = ["component", "norm", "integral"]




def vectors(n=40, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, generator=g, dtype=dtype) * 1.7).requires_grad_(True)


def upto(lmax):
    return list(range(lmax + 1))


def e3nn_sh(ls, v, normalize, normalization):
    return o3.spherical_harmonics(ls, v, normalize, normalization)


# Every convention at two degree lists, the others at one convention (each case of the compiled
# path builds its own kernel, so the list is kept short).
CASES = [(ls, normalize, n) for ls in (upto(5), [3, 1]) for normalize in (True, False) for n in NORMALIZATIONS]
CASES += [(ls, True, "component") for ls in (1, upto(2), upto(8), [2, 2, 0], "0e+2x1o+2e")]


@pytest.mark.parametrize("ls, normalize, normalization", CASES)
def test_values_and_gradients_equal_e3nn(backend, ls, normalize, normalization):
    v1, v2 = vectors(), vectors()
    ours, theirs = spherical_harmonics(ls, v1, normalize, normalization), e3nn_sh(ls, v2, normalize, normalization)
    scale = theirs.abs().max()
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-12 * scale
    weights = torch.randn_like(ours)
    (g1,) = torch.autograd.grad((ours * weights).sum(), v1)
    (g2,) = torch.autograd.grad((theirs * weights).sum(), v2)
    assert (g1 - g2).abs().max() <= 1e-12 * g2.abs().max()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("normalize", [True, False])
def test_second_derivatives_equal_e3nn(backend, normalize, normalization):
    v1, v2 = vectors(12), vectors(12)
    weights, probe = torch.randn(12, 36, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    grads = []
    for fn, v in ((spherical_harmonics, v1), (o3.spherical_harmonics, v2)):
        y = fn(list(range(6)), v, normalize, normalization)
        (g,) = torch.autograd.grad((y * weights).sum(), v, create_graph=True)
        (h,) = torch.autograd.grad((g * probe).sum(), v)
        grads.append((g, h))
    (g1, h1), (g2, h2) = grads
    assert (g1 - g2).abs().max() <= 1e-12 * g2.abs().max()
    assert (h1 - h2).abs().max() <= 1e-11 * h2.abs().max()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("normalize", [True, False])
def test_float32_accuracy_and_gradient(backend, normalize, normalization):
    v64 = vectors(200)
    v32 = v64.detach().float().requires_grad_(True)
    ref = e3nn_sh(upto(5), v64, normalize, normalization)
    ours = spherical_harmonics(upto(5), v32, normalize, normalization)
    assert ours.dtype == torch.float32
    assert (ours.double() - ref).abs().max() <= 2e-5 * ref.abs().max()
    weights = torch.randn(ref.shape, dtype=torch.float64)
    (g64,) = torch.autograd.grad((ref * weights).sum(), v64)
    (g32,) = torch.autograd.grad((ours * weights.float()).sum(), v32)
    assert (g32.double() - g64).abs().max() <= 2e-5 * g64.abs().max()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_vectors_follow_e3nn(backend, dtype):
    # normalize=True: Y^0 only, and the gradient of v / max(|v|, 1e-12) at 0, i.e. dL/du * 1e12
    # (finite, as e3nn's torch.nn.functional.normalize gives).
    v = torch.randn(20, 3, dtype=torch.float64)
    v[[0, 7, 19]] = 0.0
    for normalize in (True, False):
        v1, v2 = v.to(dtype).requires_grad_(True), v.clone().requires_grad_(True)
        ours, theirs = spherical_harmonics(upto(5), v1, normalize, "norm"), e3nn_sh(upto(5), v2, normalize, "norm")
        tolerance = 1e-12 if dtype == torch.float64 else 1e-6
        assert (ours.double() - theirs).abs().max() <= tolerance * theirs.abs().max()
        assert torch.equal(ours[0], torch.tensor([1.0] + [0.0] * 35, dtype=dtype))
        weights = torch.randn(theirs.shape, dtype=torch.float64)
        (g1,) = torch.autograd.grad((ours * weights.to(dtype)).sum(), v1)
        (g2,) = torch.autograd.grad((theirs * weights).sum(), v2)
        assert torch.isfinite(g1).all()
        for rows in ([0, 7, 19], [i for i in range(20) if i not in (0, 7, 19)]):
            assert (g1[rows].double() - g2[rows]).abs().max() <= 10 * tolerance * g2[rows].abs().max()


@pytest.mark.slow
def test_batch_shapes_module_and_threads(backend):
    v = torch.randn(2, 5, 3, dtype=torch.float64)
    module = SphericalHarmonics(upto(5), normalize=True, normalization="norm")
    out = module(v)
    assert out.shape == (2, 5, 36) and module.dim == 36
    assert torch.equal(out, spherical_harmonics(upto(5), v, True, "norm"))
    assert torch.allclose(out, e3nn_sh(upto(5), v, True, "norm"), atol=1e-13)
    assert spherical_harmonics_upto(5, torch.zeros(0, 4, 3)).shape == (0, 4, 36)
    assert spherical_harmonics([1, 0], torch.tensor([0.0, 0.0, 2.0]), True).shape == (4,)
    strided = torch.randn(3, 100, dtype=torch.float64).t()  # not contiguous
    assert torch.allclose(spherical_harmonics_upto(5, strided), e3nn_sh(upto(5), strided, True, "component"), atol=1e-12)
    # several OpenMP threads over many blocks of points, and a tail block
    many = vectors(3001, torch.float32).detach().requires_grad_(True)
    weights = torch.randn(3001, 81, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ours = spherical_harmonics_upto(8, many)
        (grad,) = torch.autograd.grad((ours * weights.float()).sum(), many)
    finally:
        torch.set_num_threads(threads)
    ref = many.detach().double().requires_grad_(True)
    theirs = e3nn_sh(upto(8), ref, True, "component")
    (ref_grad,) = torch.autograd.grad((theirs * weights).sum(), ref)
    assert (ours.double() - theirs).abs().max() < 2e-5 * theirs.abs().max()
    assert (grad.double() - ref_grad).abs().max() < 2e-5 * ref_grad.abs().max()


@pytest.mark.slow
def test_polar_axis_is_y_and_signs(backend):
    # On +y only m = 0 is non-zero, with value sqrt(2l+1) ("component"), for every degree.
    y = spherical_harmonics_upto(16, torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64))[0]
    for l in range(17):
        block = y[l * l : (l + 1) ** 2]
        assert torch.allclose(block[l], torch.tensor(float(2 * l + 1) ** 0.5, dtype=torch.float64))
        assert block.abs().sum() - block[l].abs() < 1e-12
    assert torch.allclose(
        spherical_harmonics(1, torch.tensor([[1.0, 2.0, 3.0]]), False, "component"), 3**0.5 * torch.tensor([[1.0, 2.0, 3.0]])
    )


def test_clebsch_gordan_reference_matches_e3nn():
    points = np.random.default_rng(0).normal(size=(10, 3))
    ours = np.concatenate(cg_spherical_harmonics(6, points), axis=1)
    theirs = e3nn_sh(upto(6), torch.tensor(points), False, "component").numpy()
    assert np.abs(ours - theirs).max() < 1e-12 * np.abs(theirs).max()


@pytest.mark.skipif(not has_compiler(), reason="no C compiler")
@pytest.mark.parametrize("vbytes", [16, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernel_at_every_simd_width(monkeypatch, vbytes, dtype):
    """The generated source forced to each vector width (LANES = 2..16): transposes, tails."""
    monkeypatch.setenv("SCIML_SH_BACKEND", "torch")
    ls, n = (4, 1, 0, 2), 37
    real = "float" if dtype == torch.float32 else "double"
    source = f"#define VBYTES {vbytes}\n" + harmonics_c_source(ls, "integral", True, real)
    kernels = "\n".join(kernel_name(source, name) for name in ("sciml_sh_forward", "sciml_sh_backward"))
    v = vectors(n, dtype).detach()
    v[5] = 0.0
    ref_v = v.clone().requires_grad_(True)
    ref = spherical_harmonics(ls, ref_v, True, "integral")
    grad = torch.randn_like(ref)
    (ref_grad,) = torch.autograd.grad(ref, ref_v, grad)
    out = torch.ops.sciml.spherical_harmonics(v, kernels, ref.shape[1], list(ls), "integral", True)
    out_grad = torch.ops.sciml.spherical_harmonics_backward(v, grad, kernels, max(ls))
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    assert (out - ref).abs().max() <= tolerance
    assert (out_grad - ref_grad).abs().max() <= tolerance * ref_grad.abs().max()


def test_backend_selection(monkeypatch):
    v = vectors(10)
    monkeypatch.setenv("SCIML_SH_BACKEND", "fast")
    with pytest.raises(ValueError, match="SCIML_SH_BACKEND"):
        spherical_harmonics_upto(2, v)
    monkeypatch.setenv("SCIML_SH_BACKEND", "c")
    with pytest.raises(ValueError, match="float32/float64"):
        spherical_harmonics_upto(2, v.detach().to(torch.bfloat16))
    # Without a working compiler "auto" falls back to the torch code and "c" raises.
    monkeypatch.setattr(sh_codegen, "_built", {})

    def broken(source):
        raise RuntimeError("no C compiler found (set CC)")

    monkeypatch.setattr(sh_codegen, "build_library", broken)
    with pytest.raises(RuntimeError, match="no C compiler"):
        spherical_harmonics_upto(2, v)
    monkeypatch.setenv("SCIML_SH_BACKEND", "auto")
    assert torch.allclose(spherical_harmonics_upto(2, v), e3nn_sh(upto(2), v, True, "component"), atol=1e-13)
    assert next(iter(sh_codegen._built.values()))[0] is False  # the failure is remembered


@pytest.mark.parametrize(
    "args, match",
    [
        ((-1, torch.zeros(2, 3), True), "0..16"),
        ((17, torch.zeros(2, 3), True), "0..16"),
        (([], torch.zeros(2, 3), True), "empty"),
        ((2, torch.zeros(2, 4), True), r"shape \(\.\.\., 3\)"),
        ((2, torch.zeros(2, 3, dtype=torch.int64), True), "floating-point"),
        (("2x0e+1o+1e", torch.zeros(2, 3), True), "parity"),
    ],
)
def test_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        spherical_harmonics(*args)


def test_bad_normalization_raises():
    with pytest.raises(ValueError, match="unknown normalization"):
        spherical_harmonics(2, torch.zeros(2, 3), True, normalization="unit")
    with pytest.raises(ValueError, match="unknown normalization"):
        SphericalHarmonics(2, True, normalization="unit")
    with pytest.raises(ValueError, match="lmax"):
        spherical_harmonics_upto(-1, torch.zeros(2, 3))


def test_e3nn_meaning_of_degrees_and_defaults():
    """An int is one degree, irreps repeat degrees, the default normalization is "integral", and
    pseudovector inputs (irreps_in "1e") give even parities: all as e3nn, shapes and values."""
    v = vectors(7)
    for degrees in (0, 3, [2, 0, 2], "0e + 1o + 2e", o3.Irreps("2x1o+0e")):
        ours, theirs = spherical_harmonics(degrees, v, True), o3.spherical_harmonics(degrees, v, True)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() < 1e-13
    for args in (("1x0e+1x1e+1x2e", False), (2, True, "norm", "1e"), ([1, 3], False, "component")):
        ours, theirs = SphericalHarmonics(*args), o3.SphericalHarmonics(*args)
        assert (ours.irreps_in, ours.irreps_out) == (theirs.irreps_in, theirs.irreps_out)
        assert (ours(v) - theirs(v)).abs().max() < 1e-12
    assert torch.equal(spherical_harmonics_upto(3, v), spherical_harmonics(upto(3), v, True, "component"))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_harmonics_are_o3_equivariant(backend, normalization):
    """Harmonics of rotated (or rotoreflected) vectors are the rotated harmonics, for vector (1o)
    and pseudovector (1e) inputs."""
    irreps = o3.Irreps.spherical_harmonics(6)
    assert_irreps_equivariant(lambda v: spherical_harmonics(irreps, v, True, normalization), ["1o"], irreps, atol=1e-12)
    pseudo = SphericalHarmonics("0e+1e+2e+3e", True, normalization, irreps_in="1e")
    assert_irreps_equivariant(pseudo, ["1e"], pseudo.irreps_out, atol=1e-12)

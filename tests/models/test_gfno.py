"""FNO and G-FNO: parameter counts against the reference, exact p4/p4m equivariance in 2D and 3D
at two resolutions, the rotation convention, the Hermitian spectral parametrisation,
super-resolution, bad inputs and a tiny benchmark run."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from sciml.models import build_model
from sciml.models.gfno import GroupLinear, GroupSpectralConv, PointGroup, SpectralConv, _fused

# the reference's counts (divelab AIRS OpenPDE/G-FNO, complex weights counted twice), default options
REFERENCE_PARAMETERS = {
    "fno2d": 928_641,  # width 20, 12 modes: the paper's 0.93M
    "gfno2d_p4": 853_121,  # width 10: 0.85M
    "gfno2d_p4m": 835_969,  # width 7: 0.84M
    "fno3d": 4_922_281,  # width 20, 8 modes, 6 time modes
    "gfno3d_p4": 4_799_708,  # width 11
    "gfno3d_p4m": 3_887_304,  # width 7
}
SMALL_3D = dict(width=3, modes=6, time_modes=3)  # the 3D models in equivariance tests


def _model(name, dtype=torch.float64, **options):
    torch.manual_seed(0)
    return build_model(name, **options).to(dtype).eval()


def _input(name, n, dtype=torch.float64, batch=2, time=6):
    generator = torch.Generator().manual_seed(1)
    shape = (batch, n, n, time, 10) if "3d" in name else (batch, n, n, 10)
    return torch.randn(shape, generator=generator).to(dtype)


def _relative_error(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def _origin_rotation(x):
    """The rotation about grid point (0, 0) of a periodic grid: w[i, j] -> w[j, -i mod n]."""
    return torch.roll(torch.rot90(x, 1, (1, 2)), 1, 1)


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMETERS))
@pytest.mark.slow
def test_parameter_counts_match_the_reference(name):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMETERS[name]
    assert all(not p.is_complex() for p in model.parameters())
    assert model.width == {"fno2d": 20, "gfno2d_p4": 10, "gfno2d_p4m": 7, "fno3d": 20, "gfno3d_p4": 11,
                                     "gfno3d_p4m": 7}[name]
    rebuilt = build_model(model.model_name, **model.options.to_dict())
    assert rebuilt.model_name == model.model_name and rebuilt.options == model.options


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [32, 48])
@pytest.mark.parametrize("name", ["gfno2d_p4", "gfno2d_p4m", "gfno3d_p4", "gfno3d_p4m"])
@pytest.mark.slow
def test_gfno_is_exactly_equivariant(name, n, dtype):
    """model(g x) = g model(x) for every g of the group, g acting as torch.rot90 / torch.flip."""
    options = SMALL_3D if "3d" in name else {}
    model, x = _model(name, dtype, **options), _input(name, n, dtype)
    group = model.group
    with torch.no_grad():
        y = model(x)
        for element in range(1, group.order):
            error = _relative_error(model(group.act(x, element, (1, 2))), group.act(y, element, (1, 2)))
            assert error < 1e-5, (element, error)


@pytest.mark.parametrize("name", ["fno2d", "fno3d"])
def test_fno_is_not_equivariant(name):
    model, x = _model(name, **(SMALL_3D if "3d" in name else {})), _input(name, 32)
    with torch.no_grad():
        y, rotated = torch.rot90(model(x), 1, (1, 2)), model(torch.rot90(x, 1, (1, 2)))
    mean = y.mean((1, 2), keepdim=True)  # random FNO3d outputs are nearly constant
    assert _relative_error(rotated - mean, y - mean) > 1e-2


def test_p4_is_not_reflection_equivariant():
    model, x = _model("gfno2d_p4"), _input("gfno2d_p4", 32)
    with torch.no_grad():
        assert _relative_error(model(x.flip(1)), model(x).flip(1)) > 1e-2


@pytest.mark.slow
def test_rotation_convention():
    """The symmetric grid feature is centred on the array's centre, so the model is equivariant to
    torch.rot90 (tested above) but not to the rotation about grid point (0, 0); without the grid
    feature the model is translation-equivariant and therefore equivariant to both."""
    x = _input("gfno2d_p4", 32)
    with torch.no_grad():
        model = _model("gfno2d_p4")
        assert _relative_error(model(_origin_rotation(x)), _origin_rotation(model(x))) > 1e-4
        model = _model("gfno2d_p4", grid="none")
        assert _relative_error(model(_origin_rotation(x)), _origin_rotation(model(x))) < 1e-12
        shifted = torch.roll(x, (5, -3), (1, 2))
        assert _relative_error(model(shifted), torch.roll(model(x), (5, -3), (1, 2))) < 1e-12


@pytest.mark.parametrize("group_name", ["p4", "p4m"])
@pytest.mark.parametrize("grid", [(16, 16), (16, 16, 7)])
def test_group_layers_are_equivariant_on_regular_features(group_name, grid):
    """The layers alone: g acts on regular features by moving the field and permuting the group axis."""
    group = PointGroup(group_name)
    torch.manual_seed(0)
    modes = (5, 5, 3)[: len(grid)]
    layers = [GroupSpectralConv(3, 2, modes, group).double(), GroupLinear(3, 2, group).double()]
    x = torch.randn(2, 3 * group.order, *grid, dtype=torch.float64)
    for layer in layers:
        y = layer(x)
        for element in range(1, group.order):
            moved = layer(group.act_regular(x, element, 1, (2, 3)))
            assert _relative_error(moved, group.act_regular(y, element, 1, (2, 3))) < 1e-12


def test_group_spectral_kernel_is_hermitian_and_real_in_space():
    """The layer equals ifft2(W(k) fft2(x)) with the full centred kernel, which is Hermitian, so the
    implied spatial kernel and the full complex result are real."""
    group, m, n = PointGroup("p4"), 4, 12
    torch.manual_seed(0)
    layer = GroupSpectralConv(1, 1, (m, m), group).double()
    weight = layer.weight[0, 0, 0]
    reverse = weight.flip((0, 1))
    kernel = torch.complex((weight + reverse) / 2, (weight - reverse) / 2)  # frequencies -(m-1)..m-1
    assert torch.allclose(kernel.flip((0, 1)), kernel.conj())
    spectrum = torch.zeros(n, n, dtype=torch.complex128)
    spectrum[: 2 * m - 1, : 2 * m - 1] = kernel
    spectrum = torch.roll(spectrum, (-(m - 1), -(m - 1)), (0, 1))  # frequency 0 to index 0
    assert torch.fft.ifft2(spectrum).imag.abs().max() < 1e-14
    # a lifted input (equal on every element) through the kernels of output element 0
    x = torch.randn(1, 1, n, n, dtype=torch.float64)
    y = layer(x.expand(1, group.order, n, n))[0, 0]
    full = torch.zeros(group.order, n, n, dtype=torch.complex128)
    for k in range(group.order):  # output element 0 sees the input element k through kernel k
        w = layer.weight[0, 0, k]
        full[k, : 2 * m - 1, : 2 * m - 1] = torch.complex((w + w.flip((0, 1))) / 2, (w - w.flip((0, 1))) / 2)
    full = torch.roll(full, (-(m - 1), -(m - 1)), (1, 2)).sum(0)
    expected = torch.fft.ifft2(full * torch.fft.fft2(x[0, 0]))
    assert expected.imag.abs().max() < 1e-12
    assert torch.allclose(y, expected.real, atol=1e-12)


def test_fno_spectral_conv_matches_the_reference_computation():
    """Staged truncated transforms give the reference's rfft2 -> two corners -> irfft2."""
    torch.manual_seed(0)
    m, n = 5, 16
    layer = SpectralConv(3, 2, (m, m)).double()
    x = torch.randn(2, 3, n, n + 4, dtype=torch.float64)
    weight = torch.view_as_complex(layer.weight)  # (2m, m, in, out), rows -m..m-1
    ft = torch.fft.rfft2(x)
    out = torch.zeros(2, 2, n, (n + 4) // 2 + 1, dtype=torch.complex128)
    out[:, :, :m, :m] = torch.einsum("bixy,xyio->boxy", ft[:, :, :m, :m], weight[m:])
    out[:, :, -m:, :m] = torch.einsum("bixy,xyio->boxy", ft[:, :, -m:, :m], weight[:m])
    assert torch.allclose(layer(x), torch.fft.irfft2(out, s=(n, n + 4)), atol=1e-12)


def _layer_by_layer(block, x):
    """A Fourier block computed from its layers one at a time (their own forward passes)."""
    mlp = block.mlp[2](F.gelu(block.mlp[0](block.norm(block.conv(block.norm(x))))))
    return block.activation(mlp + block.skip(x))


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("name, options, block_index", [
    ("gfno2d_p4m", {}, 0), ("gfno2d_p4", {}, 3), ("fno2d", {}, 0), ("gfno3d_p4", SMALL_3D, 1),
    ("gfno3d_p4m", dict(SMALL_3D, norm=True), 0),
])
def test_fused_block_equals_its_layers(name, options, block_index, keep, monkeypatch):
    """The fused block (spectral norm, chunked tail, hand-written backward) against the layers one by
    one: outputs and gradients to the input and every parameter, with and without kept intermediates."""
    monkeypatch.setattr(_fused, "KEEP_BYTES", _fused.KEEP_BYTES if keep else 0)
    monkeypatch.setattr(_fused, "CHUNK_BYTES", 1 << 14)  # several chunks even on a small batch
    block = _model(name, **options).train().blocks[block_index]
    channels = block.skip.weight.shape[0] * block.skip.group.order
    grid = (20, 20, 8) if "3d" in name else (24, 24)
    x = torch.randn(3, channels, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 + 0.5
    x.requires_grad_()
    weights = torch.randn(3, channels, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    inputs = [x, *block.parameters()]
    ours = block(x)
    expected = _layer_by_layer(block, x)
    assert _relative_error(ours, expected) < 1e-13
    for a, b in zip(torch.autograd.grad((ours * weights).sum(), inputs),
                    torch.autograd.grad((expected * weights).sum(), inputs)):
        assert _relative_error(a, b) < 1e-12


def test_group_mlp_equals_its_layers():
    model = _model("gfno2d_p4m")
    x = torch.randn(2, 7 * 8, 16, 16, dtype=torch.float64, requires_grad=True)
    project = model.project
    ours, expected = project(x), project[2](F.gelu(project[0](x)))
    assert _relative_error(ours, expected) < 1e-14
    inputs = [x, *project.parameters()]
    for a, b in zip(torch.autograd.grad(ours.square().sum(), inputs),
                    torch.autograd.grad(expected.square().sum(), inputs)):
        assert _relative_error(a, b) < 1e-13


def test_spectral_convolution_of_a_scaled_and_shifted_input():
    """conv(x, scale, shift) = conv(x * scale + shift), the shift applied at frequency zero."""
    torch.manual_seed(0)
    for layer, channels in ((GroupSpectralConv(2, 3, (4, 4), PointGroup("p4")), 8), (SpectralConv(3, 2, (4, 4)), 3)):
        layer = layer.double()
        x = torch.randn(2, channels, 12, 10 if channels == 3 else 12, dtype=torch.float64)
        scale, shift = torch.rand(2, channels, dtype=torch.float64) + 0.5, torch.randn(2, channels, dtype=torch.float64)
        expected = layer(x * scale[..., None, None] + shift[..., None, None])
        assert _relative_error(layer(x, scale, shift), expected) < 1e-13


@pytest.mark.parametrize("name, options, shape", [
    ("gfno2d_p4m", dict(width=2, modes=3, blocks=2), (2, 8, 8, 10)),
    ("fno2d", dict(width=3, modes=3, blocks=2), (2, 8, 10, 10)),
    ("gfno3d_p4", dict(width=1, modes=3, time_modes=2, blocks=2, norm=True), (1, 6, 6, 4, 10)),
])
@pytest.mark.slow
def test_model_gradients_pass_gradcheck(name, options, shape):
    torch.manual_seed(0)
    model = build_model(name, **options).double()
    names = [n for n, _ in model.named_parameters()]
    parameters = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    def run(x, *values):
        return functional_call(model, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(run, (x, *parameters), eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=True)


@pytest.mark.slow
def test_inference_mode_then_training():
    """The cached DFT matrices are made outside inference mode, so a first call under
    torch.inference_mode does not break training afterwards."""
    model = _model("gfno2d_p4", torch.float32).train()
    x = _input("gfno2d_p4", 40, torch.float32)
    with torch.inference_mode():
        expected = model(x)
    y = model(x)
    y.square().mean().backward()
    assert torch.allclose(y.detach(), expected, atol=1e-6)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_super_resolution():
    """Weights for 64 x 64 run at 128 x 128 (and FNO on a non-square grid)."""
    for name in ("fno2d", "gfno2d_p4"):
        model = _model(name, torch.float32)
        with torch.no_grad():
            assert model(_input(name, 64, torch.float32, batch=1)).shape == (1, 64, 64, 1)
            y = model(_input(name, 128, torch.float32, batch=1))
        assert y.shape == (1, 128, 128, 1) and bool(torch.isfinite(y).all())
    with torch.no_grad():
        assert _model("fno2d")(torch.randn(1, 32, 40, 10, dtype=torch.float64)).shape == (1, 32, 40, 1)
        assert _model("gfno3d_p4", **SMALL_3D)(_input("gfno3d_p4", 24, time=8)).shape == (2, 24, 24, 8, 1)


@pytest.mark.parametrize(
    "name, shape, message",
    [
        ("gfno2d_p4", (2, 32, 32), "4-d tensor"),
        ("gfno2d_p4", (2, 32, 32, 1, 10), "4-d tensor"),
        ("fno3d", (2, 32, 32, 10), "5-d tensor"),
        ("fno2d", (2, 32, 32, 7), "10 input channels"),
        ("gfno2d_p4m", (2, 32, 40, 10), "square"),
        ("gfno3d_p4", (2, 32, 40, 6, 10), "square"),
        ("gfno2d_p4", (2, 20, 20, 10), "fewer than twice the 12 modes"),
        ("fno2d", (2, 32, 22, 10), "fewer than twice the 12 modes"),
        ("fno3d", (2, 16, 16, 8, 10), "time modes"),
    ],
)
def test_bad_input_shapes(name, shape, message):
    options = {"time_modes": 6} if "3d" in name else {}
    with pytest.raises(ValueError, match=message):
        _model(name, **options)(torch.zeros(shape, dtype=torch.float64))


def test_bad_input_values_and_options():
    x = _input("fno2d", 32)
    x[1, 3, 4, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _model("fno2d")(x)
    with pytest.raises(ValueError, match="square"):
        _model("gfno2d_p4")(torch.zeros(1, 32, 33, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="cartesian"):
        build_model("gfno2d_p4", grid="cartesian")
    with pytest.raises(ValueError, match="grid must be"):
        build_model("fno2d", grid="polar")
    with pytest.raises(ValueError, match="fixes group='p4'"):
        build_model("gfno2d_p4", group="p6")


@pytest.mark.slow
def test_bench_gfno_runs():
    from sciml.bench.gfno import bench_gfno, format_gfno_table

    rows = bench_gfno(sizes=[32], batch=2, repeats=1, threads=1, memory=False)
    assert [r["model"] for r in rows] == ["fno2d", "gfno2d_p4", "gfno2d_p4m"]
    assert all(r["forward_backward_s"] > 0 for r in rows)
    table = format_gfno_table(rows)
    assert "gfno2d_p4m" in table and "reference" in table

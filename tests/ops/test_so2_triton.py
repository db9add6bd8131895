"""The Triton edge-frame rotations (``sciml/ops/so2_triton.py``) against the torch path of ``so2.py``.

Without a GPU the kernels are still checked: they run in Triton's interpreter (tests named
``*interpreted_so2*``, run by ``test_so2_triton_in_interpreter`` in a TRITON_INTERPRET=1 child
process) and are compiled to sm_90 cubins by Triton's NVIDIA backend. Tests on a device run only
where CUDA is available.
"""

from __future__ import annotations

import copy
from typing import Optional

import pytest
import torch

from sciml.ops import SO2Convolution, backends, edge_rotation, so2, so2_triton, wigner_D, wigner_D_blocks
from triton_testing import compile_for_sm90, run_in_interpreter

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
DTYPES = [torch.float32, torch.float64]
CASES = [(1, 0), (1, 1), (2, 1), (2, 2), (3, 1), (3, 3), (4, 2), (4, 4)]  # (lmax, mmax)
NO_DEVICE = "no CUDA device here: the kernels are covered by the interpreter and sm_90 compile tests"
NO_TRITON = "triton (with constexpr_function) is not installed"


def _wigner_leaves(lmax: int, edges: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> list:
    """[D^l (E, 2l+1, 2l+1)] of random edge frames, each a leaf requiring grad."""
    vectors = torch.randn(edges, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    blocks = wigner_D_blocks(lmax, edge_rotation(vectors))
    return [b.to(dtype=dtype, device=device).requires_grad_() for b in blocks]


def _features(edges: int, rows: int, channels: int, dtype: torch.dtype, device: str = "cpu", seed: int = 1) -> torch.Tensor:
    x = torch.randn(edges, rows, channels, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x.to(device).requires_grad_()


def _value_and_grads(rotate, features: torch.Tensor, wigner, lmax: int, mmax: int, **options) -> list:
    """[output, grad features, grad of each Wigner leaf] for a fixed random cotangent (zeros for unused leaves)."""
    out = rotate(features, wigner, lmax, mmax, **options)
    leaves = [features, *(wigner if isinstance(wigner, list) else [wigner])]
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad(out, leaves, cotangent, allow_unused=True)
    return [out.detach()] + [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]


def _assert_same(got: list, expected: list, tolerance: dict) -> None:
    names = ["output", "grad x"] + [f"grad wigner[{i}]" for i in range(len(got) - 2)]
    assert len(got) == len(expected)
    for name, a, b in zip(names, got, expected):
        torch.testing.assert_close(a, b, **tolerance, msg=lambda m, name=name: f"{name}: {m}")


def _check_both_rotations(lmax: int, mmax: int, dtype: torch.dtype, edges: int, channels: int, device: str = "cpu",
                          tolerance: Optional[dict] = None) -> None:
    """to and from the edge frame (with rescale): outputs and gradients w.r.t. x and every Wigner block."""
    tolerance = tolerance or TOLERANCE[dtype]
    blocks = _wigner_leaves(lmax, edges, dtype, device)
    x = _features(edges, (lmax + 1) ** 2, channels, dtype, device)
    expected = _value_and_grads(so2.rotate_to_edge_frame, x, blocks, lmax, mmax)
    _assert_same(_value_and_grads(so2_triton.rotate_to_edge_frame, x, blocks, lmax, mmax), expected, tolerance)
    y = _features(edges, len(so2.m_major_order(lmax, mmax)), channels, dtype, device)
    expected = _value_and_grads(so2.rotate_from_edge_frame, y, blocks, lmax, mmax)
    _assert_same(_value_and_grads(so2_triton.rotate_from_edge_frame, y, blocks, lmax, mmax), expected, tolerance)


def _convolution_pair(dtype: torch.dtype, device: str = "cpu", channels: tuple = (3, 5)) -> tuple:
    torch.manual_seed(3)
    conv = SO2Convolution(4, 2, *channels, extra_m0_output_channels=2, backend="torch").to(dtype=dtype, device=device)
    other = copy.deepcopy(conv)
    other.backend = "triton"
    return conv, other


def _convolution_value_and_grads(conv: SO2Convolution, dtype: torch.dtype, edges: int, device: str = "cpu") -> list:
    generator = torch.Generator().manual_seed(4)
    vectors = torch.randn(edges, 3, generator=generator, dtype=dtype).to(device).requires_grad_()
    x = torch.randn(edges, 25, conv.linear.in_channels, generator=generator, dtype=dtype).to(device).requires_grad_()
    radial = torch.randn(edges, conv.radial_features, generator=generator, dtype=dtype).to(device).requires_grad_()
    out, extra = conv(x, wigner_D_blocks(4, edge_rotation(vectors)), radial)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=dtype, device=device).view_as(out)).sum() + extra.square().sum()
    grads = torch.autograd.grad(loss, [x, vectors, radial, *conv.parameters()])
    return [out.detach(), extra.detach(), *grads]


# ---------------------------------------------------------------- any process


def test_pack_wigner_layout():
    lmax, edges = 3, 4
    blocks = [b.detach() for b in _wigner_leaves(lmax, edges, torch.float64)]
    packed = so2_triton.pack_wigner(blocks, lmax)
    assert packed.shape == (edges, so2_triton.packed_wigner_size(lmax)) == (edges, 1 + 9 + 25 + 49)
    for l, block in enumerate(blocks):
        start = so2_triton.packed_block_offset(l)
        assert torch.equal(packed[:, start : start + (2 * l + 1) ** 2].view_as(block), block)
    dense = wigner_D(lmax, edge_rotation(torch.randn(edges, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)))
    assert torch.equal(so2_triton.pack_wigner(dense, lmax), packed)
    assert so2_triton.pack_wigner(packed, lmax) is packed
    assert torch.equal(so2_triton.pack_wigner(blocks + [torch.zeros(edges, 9, 9)], lmax), packed)
    with pytest.raises(ValueError, match=r"packed wigner must have shape \(5, 84\)"):
        so2_triton.pack_wigner(packed, lmax, edges=5)
    with pytest.raises(ValueError, match="wigner blocks"):
        so2_triton.pack_wigner(blocks[:2], lmax)


@pytest.mark.parametrize("lmax, mmax", [(0, 0), (3, 1), (6, 6)])
def test_kernel_m_major_positions(lmax, mmax):
    """The closed-form positions the kernels use (at compile time) against so2's m-major order."""
    positions = [so2_triton.m_major_position(l, m, lmax) for l, m in so2.m_major_order(lmax, mmax)]
    assert positions == list(range(len(positions)))
    assert so2_triton._num_coefficients(lmax, mmax) == len(positions)


def test_backend_argument_and_cpu_dispatch(monkeypatch):
    with pytest.raises(ValueError, match="unknown SO\\(2\\) rotation backend 'cuda'"):
        SO2Convolution(2, 1, backend="cuda")
    conv = SO2Convolution(2, 1, in_channels=3, out_channels=2).double()
    assert conv.backend == "auto"
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    wigner = wigner_D_blocks(2, edge_rotation(torch.randn(4, 3, dtype=torch.float64)))
    if not torch.cuda.is_available():  # "auto" keeps the torch path on the CPU, even under the interpreter
        assert backends.resolve("rotation", "auto", x.device, x.dtype) == "torch"
        monkeypatch.setattr(so2_triton, "rotate_to_edge_frame", None)  # would fail if called
        expected = conv(x, wigner)
        conv.backend = "torch"
        assert torch.equal(conv(x, wigner), expected)
    if not so2_triton.available(x.device):
        conv.backend = "triton"
        with pytest.raises(RuntimeError, match="SO\\(2\\) rotation backend 'triton' is not usable on cpu"):
            conv(x, wigner)
    conv.backend = "bogus"
    with pytest.raises(ValueError, match="unknown SO\\(2\\) rotation backend 'bogus'"):
        conv(x, wigner)


def test_triton_rotations_validate_inputs():
    blocks = [b.detach() for b in _wigner_leaves(2, 3, torch.float64)]
    with pytest.raises(ValueError, match=r"x must have shape \(E, 9, C\)"):
        so2_triton.rotate_to_edge_frame(torch.zeros(3, 8, 2, dtype=torch.float64), blocks, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(E, 7, C\) \(m-major, lmax=2, mmax=1\)"):
        so2_triton.rotate_from_edge_frame(torch.zeros(3, 9, 2, dtype=torch.float64), blocks, 2, 1)
    with pytest.raises(TypeError, match="float32 and float64"):
        so2_triton.rotate_to_edge_frame(torch.zeros(3, 9, 2, dtype=torch.float16), blocks, 2)
    with pytest.raises(ValueError, match="wigner must match x's dtype"):
        so2_triton.rotate_to_edge_frame(torch.zeros(3, 9, 2), blocks, 2)
    with pytest.raises(ValueError, match=r"wigner blocks must be \[\(E=4"):
        so2_triton.rotate_to_edge_frame(torch.zeros(4, 9, 2, dtype=torch.float64), blocks, 2)
    with pytest.raises(ValueError, match="mmax must be an int in 0..lmax=2"):
        so2_triton.rotate_to_edge_frame(torch.zeros(3, 9, 2, dtype=torch.float64), blocks, 2, 3)


@pytest.mark.slow
def test_so2_triton_kernels_compile_for_sm90():
    """Triton's NVIDIA backend lowers every kernel to a cubin (types and layouts the interpreter accepts)."""
    if not so2_triton._SUPPORTED:
        pytest.skip(so2_triton.unavailable_reason() or NO_TRITON)
    # (lmax, mmax, channels, edges, dtype, rescale, unit degree 0): small and wide tiles, both dtypes, every flag
    configs = [(2, 1, 5, 1000, "fp32", True, False), (6, 2, 128, 10**5, "fp32", True, True), (4, 4, 16, 10, "fp64", False, True)]
    kernels = [
        (so2_triton._to_m_major_kernel, ("x", "w", "scales", "out")),
        (so2_triton._from_m_major_kernel, ("y", "w", "scales", "out")),
        (so2_triton._wigner_outer_kernel, ("y", "x", "scales", "out")),
    ]
    for lmax, mmax, channels, edges, real, rescale, unit in configs:
        block_e, block_c, num_warps = so2_triton.tile_sizes(lmax, channels, edges)
        for kernel, names in kernels:
            signature = {name: f"*{real}" for name in names}
            signature.update(edges="i32", channels="i32")
            constants = dict(LMAX=lmax, MMAX=mmax, RESCALE=rescale, BLOCK_E=block_e, BLOCK_C=block_c)
            if kernel is not so2_triton._wigner_outer_kernel:
                constants["UNIT_DEGREE0"] = unit
            signature.update({name: "constexpr" for name in constants})
            assert compile_for_sm90(kernel, signature, constants, num_warps), (kernel.__name__, constants)


@pytest.mark.slow
def test_so2_triton_in_interpreter():
    if not so2_triton._SUPPORTED:
        pytest.skip(so2_triton.unavailable_reason() or NO_TRITON)
    run_in_interpreter(__file__, "interpreted_so2")


# ---------------------------------------------------------------- Triton's interpreter (child process)


@pytest.fixture
def interpreter():
    if not so2_triton.available(torch.device("cpu")):
        pytest.skip("runs in the TRITON_INTERPRET=1 child process of test_so2_triton_in_interpreter")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lmax, mmax", CASES)
def test_interpreted_so2_rotations_match_torch(interpreter, lmax, mmax, dtype):
    _check_both_rotations(lmax, mmax, dtype, edges=5, channels=3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_interpreted_so2_tiles_with_tails(interpreter, monkeypatch, dtype):
    """Several edge and channel blocks per launch, each with a masked tail, and a channel loop."""
    monkeypatch.setattr(so2_triton, "MAX_BLOCK_C", 2)
    monkeypatch.setattr(so2_triton, "TILE", 32)
    assert so2_triton.tile_sizes(3, 5, 7)[:2] == (2, 2)
    _check_both_rotations(3, 2, dtype, edges=7, channels=5)


def test_interpreted_so2_dense_and_packed_wigner(interpreter):
    lmax, mmax, edges = 3, 2, 4
    blocks = [b.detach() for b in _wigner_leaves(lmax, edges, torch.float64)]
    full = torch.zeros(edges, 16, 16, dtype=torch.float64)
    for l, block in enumerate(blocks):
        full[:, l * l : (l + 1) ** 2, l * l : (l + 1) ** 2] = block
    x = _features(edges, 16, 2, torch.float64)
    for rotate, features in (("rotate_to_edge_frame", x), ("rotate_from_edge_frame", x[:, : len(so2.m_major_order(lmax, mmax))])):
        features = features.detach().requires_grad_()
        dense_leaf = full.clone().requires_grad_()
        expected = _value_and_grads(getattr(so2, rotate), features, dense_leaf, lmax, mmax)
        _assert_same(_value_and_grads(getattr(so2_triton, rotate), features, dense_leaf, lmax, mmax), expected, TOLERANCE[torch.float64])
        packed_leaf = so2_triton.pack_wigner(blocks, lmax).requires_grad_()
        got = _value_and_grads(getattr(so2_triton, rotate), features, packed_leaf, lmax, mmax)
        _assert_same(got[:2], expected[:2], TOLERANCE[torch.float64])
        torch.testing.assert_close(got[2], so2_triton.pack_wigner(expected[2], lmax), **TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", DTYPES)
def test_interpreted_so2_convolution_backends_agree(interpreter, dtype):
    """Outputs, extra outputs and gradients w.r.t. features, edge vectors, radial weights and parameters."""
    conv, other = _convolution_pair(dtype)
    expected = _convolution_value_and_grads(conv, dtype, edges=6)
    got = _convolution_value_and_grads(other, dtype, edges=6)
    for i, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype], msg=lambda m, i=i: f"output/gradient {i}: {m}")


def test_interpreted_so2_gradcheck(interpreter):
    """First and second derivatives (forces of a force-trained model) w.r.t. features and packed Wigner."""
    lmax, mmax, edges = 2, 1, 2
    packed = so2_triton.pack_wigner([b.detach() for b in _wigner_leaves(lmax, edges, torch.float64)], lmax)
    packed.requires_grad_()
    x = _features(edges, 9, 2, torch.float64)
    y = _features(edges, 7, 2, torch.float64)
    checks = [
        (lambda f, w: so2_triton.rotate_to_edge_frame(f, w, lmax, mmax), (x, packed)),
        (lambda f, w: so2_triton.rotate_from_edge_frame(f, w, lmax, mmax), (y, packed)),
    ]
    for function, inputs in checks:
        # fast mode (random projections of the Jacobians): the full check takes minutes interpreted
        assert torch.autograd.gradcheck(function, inputs, fast_mode=True)
        assert torch.autograd.gradgradcheck(function, inputs, fast_mode=True)


# ---------------------------------------------------------------- on a device


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_DEVICE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lmax, mmax", [(2, 2), (6, 2), (6, 6)])
def test_device_rotations_match_torch(lmax, mmax, dtype):
    # 96 channels: a full and a masked channel block; fp32 gradients sum over hundreds of products
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else TOLERANCE[dtype]
    _check_both_rotations(lmax, mmax, dtype, edges=3000, channels=96, device="cuda", tolerance=tolerance)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_DEVICE)
def test_device_convolution_auto_is_triton_and_deterministic(monkeypatch):
    conv, other = _convolution_pair(torch.float32, "cuda", channels=(32, 48))
    other.backend = "auto"
    calls = []
    rotate = so2_triton.rotate_to_edge_frame

    def counted(*args, **kwargs):
        calls.append(args[0].device)
        return rotate(*args, **kwargs)

    monkeypatch.setattr(so2_triton, "rotate_to_edge_frame", counted)
    expected = _convolution_value_and_grads(conv, torch.float32, edges=5000, device="cuda")
    first = _convolution_value_and_grads(other, torch.float32, edges=5000, device="cuda")
    second = _convolution_value_and_grads(other, torch.float32, edges=5000, device="cuda")
    assert len(calls) == 2, "backend 'auto' must pick the triton kernels on CUDA"
    for a, b, c in zip(first, second, expected):
        assert torch.equal(a, b), "the kernels must be bitwise deterministic"
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)

"""TensorProduct: equal to e3nn (values and gradients) on every backend, every mode, both dtypes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from e3nn import o3

from sciml.ops import ChannelwiseTensorProduct, FullyConnectedTensorProduct, TensorProduct
from sciml.ops.tensor_product import cpu
from sciml.ops.tensor_product.core import PathRow
from sciml.ops.tensor_product.cpu_codegen import ProgramPath
from sciml.testing.irreps import assert_irreps_equivariant
from tp_cases import MODES, e3nn_module, random_e3nn_tensor_product

CPU_BACKENDS = ["reference", "torch"] + (["cpu"] if cpu.available() else [])
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def _inputs(tp, batch: int, dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x1 = torch.randn(batch, tp.irreps_in1.dim, generator=generator, dtype=dtype, requires_grad=True)
    x2 = torch.randn(batch, tp.irreps_in2.dim, generator=generator, dtype=dtype, requires_grad=True)
    weight = None
    if not tp.shared_weights and tp.weight_numel:
        weight = torch.randn(batch, tp.weight_numel, generator=generator, dtype=dtype, requires_grad=True)
    return x1, x2, weight


def _forward_backward(module, x1, x2, weight):
    out = module(x1, x2) if weight is None else module(x1, x2, weight)
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    leaves = [t for t in (x1, x2, weight) if t is not None]
    if module.internal_weights and module.weight.numel():
        leaves.append(module.weight)
    grads = torch.autograd.grad((out * probe).sum(), leaves, allow_unused=True)
    return [out, *grads]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
def test_every_backend_equals_e3nn(mode, shared, dtype):
    for seed in range(2):
        e3nn_tp = random_e3nn_tensor_product(seed, mode, shared, dtype=dtype)
        inputs = _inputs(e3nn_tp, 5, dtype, seed)
        expected = _forward_backward(e3nn_tp, *inputs)
        ours = TensorProduct.from_e3nn(e3nn_tp)
        assert ours.weight_numel == e3nn_tp.weight_numel
        for backend in CPU_BACKENDS:
            ours.backend = backend
            for got, want in zip(_forward_backward(ours, *inputs), expected):
                torch.testing.assert_close(got, want, **TOLERANCE[dtype], msg=f"{mode} {backend}")


@pytest.mark.parametrize("irrep_normalization", ["component", "norm", "none"])
@pytest.mark.parametrize("path_normalization", ["element", "path", "none"])
def test_normalisation_arguments_match_e3nn(irrep_normalization, path_normalization):
    irreps1, irreps2, irreps_out = o3.Irreps("2x0e+3x1o"), o3.Irreps("1x0e+2x1o+1x2e"), o3.Irreps("2x0e+2x1o+2x2e+1x1e")
    instructions = [(i1, i2, io, "uvw", True) for i1, (_, a) in enumerate(irreps1) for i2, (_, b) in enumerate(irreps2)
                    for io, (_, c) in enumerate(irreps_out) if c in a * b]
    kwargs = dict(in1_var=[1.0, 2.0], in2_var=[0.5, 1.0, 3.0], out_var=[1.0, 2.0, 0.5, 1.5],
                  irrep_normalization=irrep_normalization, path_normalization=path_normalization)
    reference = e3nn_module(lambda: o3.TensorProduct(irreps1, irreps2, irreps_out, instructions, **kwargs), torch.float64)
    ours = TensorProduct(irreps1, irreps2, irreps_out, instructions, **kwargs).double()
    with torch.no_grad():
        ours.weight.copy_(reference.weight)
    x1, x2 = torch.randn(4, irreps1.dim, dtype=torch.float64), torch.randn(4, irreps2.dim, dtype=torch.float64)
    torch.testing.assert_close(ours(x1, x2), reference(x1, x2), rtol=1e-12, atol=1e-12)


def test_builders_equal_e3nn_and_broadcast_batch_dimensions():
    irreps1, irreps2 = o3.Irreps("4x0e+3x1o+2x2e"), o3.Irreps.spherical_harmonics(2)
    fc_e3nn = e3nn_module(lambda: o3.FullyConnectedTensorProduct(irreps1, irreps2, "3x0e+2x1o+2x2e"), torch.float64)
    fc = FullyConnectedTensorProduct(irreps1, irreps2, "3x0e+2x1o+2x2e").double()
    assert [p[:5] for p in fc.raw_instructions] == [i[:5] for i in fc_e3nn.instructions]
    with torch.no_grad():
        fc.weight.copy_(fc_e3nn.weight)
    x1 = torch.randn(2, 3, irreps1.dim, dtype=torch.float64)
    x2 = torch.randn(1, 3, irreps2.dim, dtype=torch.float64)
    torch.testing.assert_close(fc(x1, x2), fc_e3nn(x1, x2))
    assert fc(x1, x2).shape == (2, 3, fc.irreps_out.dim)

    channelwise = ChannelwiseTensorProduct(irreps1, irreps2)
    assert all(p.mode == "uvu" for p in channelwise.paths) and not channelwise.shared_weights
    e3nn_uvu = o3.TensorProduct(irreps1, irreps2, irreps1, channelwise.raw_instructions,
                                shared_weights=False, internal_weights=False)
    x1, x2 = torch.randn(6, irreps1.dim), torch.randn(6, irreps2.dim)
    weight = torch.randn(6, channelwise.weight_numel)
    torch.testing.assert_close(channelwise(x1, x2, weight), e3nn_uvu(x1, x2, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS[1:])
@pytest.mark.slow
def test_gradcheck_and_second_derivatives(backend):
    irreps = o3.Irreps("2x0e+2x1o+1x2e")
    tp = ChannelwiseTensorProduct(irreps, o3.Irreps.spherical_harmonics(2), backend=backend).double()
    x1 = torch.randn(3, irreps.dim, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, tp.weight_numel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tp, (x1, x2, weight))
    assert torch.autograd.gradgradcheck(tp, (x1, x2, weight))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_output_rotates_with_the_inputs(backend):
    irreps1, irreps2, irreps_out = "3x0e+2x1o+2x2e", "0e+1o+2e", "2x0e+2x1o+2x2e+1x1e"
    tp = FullyConnectedTensorProduct(irreps1, irreps2, irreps_out, backend=backend).double()
    assert_irreps_equivariant(tp, [irreps1, irreps2], irreps_out, atol=1e-12)


def test_backend_selection(monkeypatch):
    """The backend is chosen once, when the module is built or moved: SCIML_TP_BACKEND as it is then."""
    tp = ChannelwiseTensorProduct("2x0e+2x1o", "0e+1o")
    x1, x2, weight = torch.randn(4, 8), torch.randn(4, 4), torch.randn(4, tp.weight_numel)
    expected = tp(x1, x2, weight)
    assert tp.resolved_backend == "cpu"
    monkeypatch.setenv("SCIML_TP_BACKEND", "torch")
    assert tp.resolved_backend == "cpu"  # not re-read on every call
    torch_tp = ChannelwiseTensorProduct("2x0e+2x1o", "0e+1o")
    assert torch_tp.resolved_backend == "torch"
    torch.testing.assert_close(torch_tp(x1, x2, weight), expected)
    assert tp.double().resolved_backend == "torch"  # moving the module chooses again
    monkeypatch.setenv("SCIML_TP_BACKEND", "fastest")
    with pytest.raises(ValueError, match="unknown tensor-product backend 'fastest'"):
        ChannelwiseTensorProduct("2x0e+2x1o", "0e+1o")
    monkeypatch.delenv("SCIML_TP_BACKEND")
    with pytest.raises(ValueError, match="backend 'cuda' is not usable on cpu"):
        ChannelwiseTensorProduct("2x0e", "0e", backend="cuda")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("2x1q", "0e", "2x1q", []), r"irreps_in1: cannot parse '2x1q'"),
        (("1o", "1o", "1o", [(0, 0, 0, "uvw", True)]), r"1o x 1o -> 1o violates parity"),
        (("1o", "1o", "3e", [(0, 0, 0, "uvw", True)]), r"1o x 1o -> 3e violates the selection rule"),
        (("1o", "1o", "1e", [(0, 0, 0, "uvx", True)]), r"unknown connection mode 'uvx'"),
        (("1o", "1o", "1e", [(0, 1, 0, "uvw", True)]), r"index 1 out of range for irreps_in2"),
        (("2x1o", "1o", "3x1e", [(0, 0, 0, "uvu", True)]), r"mode 'uvu': mul_out \(3\) must equal mul1 \(2\)"),
    ],
)
def test_bad_construction_is_a_clear_value_error(arguments, message):
    with pytest.raises(ValueError, match=message):
        TensorProduct(*arguments)


def test_bad_call_is_a_clear_value_error():
    tp = ChannelwiseTensorProduct("2x0e+2x1o", "0e+1o")
    with pytest.raises(ValueError, match=r"x1 has 7 features but irreps_in1 = 2x0e\+2x1o has dim 8"):
        tp(torch.randn(3, 7), torch.randn(3, 4), torch.randn(3, tp.weight_numel))
    with pytest.raises(ValueError, match=r"weights must have shape \(\.\.\., 8\)"):
        tp(torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="no internal weights: pass `weight`"):
        tp(torch.randn(3, 8), torch.randn(3, 4))
    with pytest.raises(ValueError, match="batch shapes do not broadcast"):
        tp(torch.randn(3, 8), torch.randn(2, 4), torch.randn(3, tp.weight_numel))


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="no C compiler for the cpu kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.slow
def test_plan_specialised_cpu_kernel_equals_reference(monkeypatch, dtype):
    """The generated kernel (forced on small inputs) for every output slot: channel counts that
    fill whole vectors (16) and leave a scalar tail (3), shared and per-sample weights, all modes."""
    monkeypatch.setenv("SCIML_CPU_SPECIALISE", "always")
    cases = [TensorProduct.from_e3nn(random_e3nn_tensor_product(seed, mode, shared, dtype=dtype))
             for seed, mode, shared in [(0, "uvuv", True), (1, "uuw", False), (2, "uvv", False), (3, "uvw", True)]]
    cases.append(ChannelwiseTensorProduct("16x0e+16x1o+16x2e", "0e+1o+2e").to(dtype))
    for tp in cases:
        inputs = _inputs(tp, 4, dtype)
        tp.backend = "reference"
        expected = _forward_backward(tp, *inputs)
        tp.backend = "cpu"
        for got, want in zip(_forward_backward(tp, *inputs), expected):
            torch.testing.assert_close(got, want, **TOLERANCE[dtype])


@pytest.mark.parametrize("specialise", ["never", "always"])
@pytest.mark.slow
def test_one_block_per_path_and_per_sample_fully_connected_equal_e3nn(monkeypatch, specialise):
    """The MACE/NequIP layout (uvu, one output block per path, per-edge weights, read and written in
    mul_ir through the core's column selections) and fully connected products with per-sample
    weights (mixed by the core), generic and specialised kernels, values and gradients."""
    from sciml.bench.tp import feature_irreps, mace_layout

    monkeypatch.setenv("SCIML_CPU_SPECIALISE", specialise)
    irreps, sh = feature_irreps(3, 2), o3.Irreps.spherical_harmonics(2)
    irreps_out, instructions = mace_layout(irreps, sh, 2)
    options = dict(shared_weights=False, internal_weights=False)
    modules = [e3nn_module(lambda: o3.TensorProduct(irreps, sh, irreps_out, instructions, **options), torch.float64),
               e3nn_module(lambda: o3.FullyConnectedTensorProduct(irreps, sh, irreps, **options), torch.float64)]
    for e3nn_tp in modules:
        inputs = _inputs(e3nn_tp, 6, torch.float64)
        expected = _forward_backward(e3nn_tp, *inputs)
        ours = TensorProduct.from_e3nn(e3nn_tp)
        for backend in CPU_BACKENDS:
            ours.backend = backend
            for got, want in zip(_forward_backward(ours, *inputs), expected):
                torch.testing.assert_close(got, want, **TOLERANCE[torch.float64], msg=backend)


@pytest.mark.slow
def test_bench_rows_check_against_e3nn_and_report_the_roofline():
    from sciml.bench.tp import channelwise_rows, conv_rows, format_tp_table

    limits = {"matmul_gflops": 100.0, "copy_gbs": 20.0}
    rows = channelwise_rows([4], [1], 64, limits, repeats=1) + conv_rows(4, [1], 8, 64, repeats=1)
    table = format_tp_table(rows, limits)
    assert rows[0]["gflops"] > 0 and rows[0]["above_bound"] > 0 and rows[0]["paths"] == 4
    assert "C=4 L=1 E=64" in table and "conv (fused)" in table


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="no C compiler for the cpu kernel")
@pytest.mark.parametrize("channels", [16, 3])
def test_one_pass_gradients_equal_separate_passes(monkeypatch, channels):
    irreps = f"{channels}x0e+{channels}x1o+{channels}x2e"
    tp = ChannelwiseTensorProduct(irreps, "0e+1o+2e", backend="cpu").double()
    inputs = _inputs(tp, 6, torch.float64)
    calls = []
    fused = cpu.fused_gradients
    monkeypatch.setattr(cpu, "fused_gradients", lambda *args: calls.append(1) or fused(*args))
    one_pass = _forward_backward(tp, *inputs)
    assert calls, "the one-pass gradients were not used for a channelwise product"
    monkeypatch.setattr(cpu, "fused_gradients", lambda *args: None)
    for got, want in zip(one_pass, _forward_backward(tp, *inputs)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_auto_falls_back_to_the_reference_without_a_compiler(monkeypatch):
    from sciml.ops import backends

    monkeypatch.setattr(cpu, "_failure", "no C compiler found (set CC)")
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(backends, "_REASONS", {})
    monkeypatch.setattr(backends, "_CHOICES", {})
    with pytest.warns(UserWarning, match="backend 'cpu' unavailable: no C compiler found"):
        tp = ChannelwiseTensorProduct("2x0e+2x1o", "0e+1o")
    assert tp.resolved_backend == "reference"
    x1, x2, weight = torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, tp.weight_numel)
    out = tp(x1, x2, weight)
    tp.backend = "reference"
    torch.testing.assert_close(out, tp(x1, x2, weight))
    with pytest.raises(ValueError, match="backend 'cpu' is not usable on cpu: no C compiler found"):
        ChannelwiseTensorProduct("2x0e", "0e", backend="cpu")


def test_pickle_and_deepcopy_after_kernels_ran(monkeypatch):
    import copy
    import pickle

    monkeypatch.setenv("SCIML_CPU_SPECIALISE", "always")  # compiled kernels end up in the caches
    fc = FullyConnectedTensorProduct("4x0e+4x1o", "0e+1o", "4x0e+4x1o")
    channelwise = ChannelwiseTensorProduct("16x0e+16x1o", "0e+1o")
    x, sh = torch.randn(5, 16), torch.randn(5, 4)
    for tp, args in ((fc, (x, sh)), (channelwise, (torch.randn(5, 64), sh, torch.randn(5, channelwise.weight_numel)))):
        expected = tp(*args)
        for clone in (pickle.loads(pickle.dumps(tp)), copy.deepcopy(tp)):
            torch.testing.assert_close(clone(*args), expected)


def test_other_dtypes_run_on_the_reference_under_auto():
    tp = ChannelwiseTensorProduct("4x0e+4x1o", "0e+1o")
    x1, x2, weight = torch.randn(5, 16), torch.randn(5, 4), torch.randn(5, tp.weight_numel)
    low = tp(x1.bfloat16(), x2.bfloat16(), weight.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), tp(x1, x2, weight), rtol=0.05, atol=0.05)
    tp.backend = "cpu"
    with pytest.raises(ValueError, match="backend 'cpu' supports float32/float64, got torch.bfloat16"):
        tp(x1.bfloat16(), x2.bfloat16(), weight.bfloat16())


def test_plan_rows_have_the_layout_the_c_kernel_reads():
    """``cpu_kernel.c`` reads plan rows (``PathRow``) and program rows (``ProgramPath``) by position."""
    source = Path(cpu.__file__).with_name("cpu_kernel.c").read_text()
    assert f"#define PATH_COLUMNS {len(PathRow._fields)} " in source
    assert f"const int64_t *path = paths + {len(ProgramPath._fields)} * p;" in source
    plan_reads = {"off_a": "ar + P[{}]", "off_s": "sr + P[{}]", "bc_s": "(int)P[{}]", "channels": "U = P[{}]",
                  "begin": "e = P[{}]", "end": "e < P[{}]"}
    program_reads = {"channels": "channels = path[{}]", "out_broadcast": "(int)path[{}]"}
    for fields, reads in ((PathRow._fields, plan_reads), (ProgramPath._fields, program_reads)):
        for field, read in reads.items():
            assert read.format(fields.index(field)) in source, (field, read)
    plan = ChannelwiseTensorProduct("2x0e+2x1o", "0e+1o")._lowered.plan
    assert [list(row) for row in plan.path_rows()] == plan.paths.tolist()

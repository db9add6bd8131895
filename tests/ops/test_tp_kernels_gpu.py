"""The GPU sparse tensor-product cores (``triton_core``, ``cuda``) against the reference.

Without a GPU each kernel is still checked: the Triton kernel runs in Triton's interpreter
(``TRITON_INTERPRET=1``, CPU tensors) and is compiled to an sm_90 cubin by Triton's own NVIDIA
backend; ``kernels/tp_core.cu`` is compiled with nvcc and its logic is run by a CPU emulation
(``tests/tp_core_cuda_emulator.cpp``: one OS thread per CUDA thread, real barriers). The runtime
checks on a device run only where CUDA is available.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from sciml.ops import backends
from sciml.ops.tensor_product import TensorProduct, _kernel_schedule, cuda, tensor_product_conv, triton_core
from sciml.ops.tensor_product.core import core_backend, register_core_backend, torch_core
from tp_cases import MODES, random_e3nn_tensor_product

REPO = Path(__file__).resolve().parents[2]
CU_SOURCE = REPO / "kernels" / "tp_core.cu"
EMULATOR_SOURCE = Path(__file__).with_name("tp_core_cuda_emulator.cpp")
NO_DEVICE = "no CUDA device here: the kernels are covered by the interpreter, compile and emulation tests"
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}

# mode -> (irreps_in1, irreps_in2, irreps_out): <= 4 channels, l <= 2, every mode-specific lowering
# (mul2 = 1 and > 1 for uvu/uvv, unweighted uuw summing channels, channel outer products)
CASES = {
    "uvw": ("2x0e+1x1o", "1x0e+2x1o", "2x0e+1x1o+1x1e+1x2e"),
    "uvu": ("2x0e+2x1o", "1x0e+2x1o", "2x0e+2x1o+2x1e+2x2e"),
    "uvv": ("1x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o+2x1e"),
    "uuw": ("2x0e+2x1o", "2x0e+2x1o", "1x0e+2x1o+1x1e"),
    "uuu": ("2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o+2x1e"),
    "uvuv": ("1x0e+2x1o", "2x1o", "4x0e+2x1o+4x1e"),
}
CORE_MODES = ["uvw", "uvuv", "uuw"]  # their plans broadcast b, a (and s), and the output over channels


def _instructions(mode: str, irreps_in1: str, irreps_in2: str, irreps_out: str) -> list:
    """Every allowed (i1, i2, i_out) of ``mode``: uuw paths into a single channel unweighted (they
    sum the channels: an output broadcast over channels), and every third path of the other modes
    but uvw unweighted."""
    from sciml.ops.irreps import parse_irreps

    in1, in2, out = (parse_irreps(irreps, "irreps") for irreps in (irreps_in1, irreps_in2, irreps_out))
    allowed = {
        "uvw": lambda m1, m2, mo: True,
        "uvu": lambda m1, m2, mo: mo == m1,
        "uvv": lambda m1, m2, mo: mo == m2,
        "uuw": lambda m1, m2, mo: m1 == m2,
        "uuu": lambda m1, m2, mo: m1 == m2 == mo,
        "uvuv": lambda m1, m2, mo: mo == m1 * m2,
    }[mode]
    instructions = []
    for i1, (m1, ir1) in enumerate(in1):
        for i2, (m2, ir2) in enumerate(in2):
            for io, (mo, ir_out) in enumerate(out):
                if ir_out in ir1 * ir2 and allowed(m1, m2, mo):
                    unweighted = mo == 1 if mode == "uuw" else mode != "uvw" and len(instructions) % 3 == 2
                    instructions.append((i1, i2, io, mode, not unweighted))
    return instructions


def _product(mode: str, shared: bool, backend: Optional[str] = None) -> TensorProduct:
    irreps = CASES[mode]
    return TensorProduct(*irreps, _instructions(mode, *irreps), shared_weights=shared, internal_weights=False, backend=backend)


def _inputs(tp: TensorProduct, terms: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    weight_shape = (tp.weight_numel,) if tp.shared_weights else (terms, tp.weight_numel)
    tensors = [
        torch.randn(terms, tp.irreps_in1.dim, generator=generator, dtype=dtype),
        torch.randn(terms, tp.irreps_in2.dim, generator=generator, dtype=dtype),
        torch.randn(*weight_shape, generator=generator, dtype=dtype),
    ]
    return tuple(t.to(device).requires_grad_() for t in tensors)


def _forward_and_grads(run: Callable, inputs: tuple, seed: int = 1) -> tuple:
    out = run(*inputs)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad(out, inputs, cotangent)
    return (out.detach(), *grads)


def _assert_same(got: tuple, expected: tuple, dtype: torch.dtype, long_sums: bool = False) -> None:
    """Output and gradients equal; ``long_sums``: fp32 sums over hundreds of terms (device tests)."""
    tolerance = dict(rtol=1e-4, atol=1e-4) if long_sums and dtype == torch.float32 else TOLERANCE[dtype]
    for name, a, b in zip(("output", "grad x1", "grad x2", "grad weights"), got, expected):
        torch.testing.assert_close(a, b, **tolerance, msg=lambda m, name=name: f"{name}: {m}")


def _lowered(tp: TensorProduct, backend: str, rowmap_x1=None, rowmap_out=None, out_rows=None) -> Callable:
    """The product through ``backend``'s core (any registered core name), optionally fused."""

    def run(x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        weights = weight.reshape(1, -1) if tp.shared_weights else weight
        return tp._lowered(x1, x2, weights, backend, rowmap_x1=rowmap_x1, rowmap_out=rowmap_out, out_rows=out_rows)

    return run


def _scatter_reference(tp: TensorProduct, senders: torch.Tensor, receivers: torch.Tensor, nodes: int) -> Callable:
    def run(x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        messages = tp(x1[senders], x2, weight)
        return messages.new_zeros(nodes, messages.shape[1]).index_add(0, receivers, messages)

    return run


def _check_scatter(backend: str, dtype: torch.dtype, nodes: int = 4, edges: int = 7, device: str = "cpu") -> tuple:
    """Fused gather -> product -> scatter through ``backend`` against gather, reference, index_add.

    Receivers repeat, are unsorted, and the last node receives nothing. Returns the results.
    """
    tp = _scatter_product(dtype).to(device)
    generator = torch.Generator().manual_seed(3)
    senders = torch.randint(0, nodes, (edges,), generator=generator).to(device)
    receivers = torch.randint(0, nodes - 1, (edges,), generator=generator).to(device)
    assert torch.any(receivers[1:] < receivers[:-1]) and len(torch.unique(receivers)) < edges
    tensors = (
        torch.randn(nodes, tp.irreps_in1.dim, generator=generator, dtype=dtype),
        torch.randn(edges, tp.irreps_in2.dim, generator=generator, dtype=dtype),
        torch.randn(edges, tp.weight_numel, generator=generator, dtype=dtype),
    )
    inputs = tuple(t.to(device).requires_grad_() for t in tensors)
    tp.backend = "reference"
    expected = _forward_and_grads(_scatter_reference(tp, senders, receivers, nodes), inputs)
    if backend in backends.choices("tensor_product"):  # the public fused convolution
        tp.backend = backend
        edge_index = torch.stack([receivers, senders])
        got = _forward_and_grads(lambda x1, x2, w: tensor_product_conv(x1, x2, w, edge_index, tp, nodes), inputs)
    else:  # a core registered under another name (the CUDA emulation)
        got = _forward_and_grads(_lowered(tp, backend, senders, receivers, nodes), inputs)
    _assert_same(got, expected, dtype, long_sums=edges > 100)
    assert torch.all(got[0][nodes - 1] == 0)
    return got


def _check_core_against_torch(core: Callable, mode: str, dtype: torch.dtype = torch.float64) -> None:
    """``core`` equals ``core.torch_core`` with every slot as the output, on the plan of a CASES
    product, with gather/scatter row maps (repeated rows) on three slots and the identity on b."""
    plan = _product(mode, shared=False)._lowered.plan
    generator = torch.Generator().manual_seed(11)
    terms = 6
    rows = [3, terms, 2, 4]  # operand rows per slot; slot b (identity map) has one row per term
    rowmaps = [torch.randint(0, n, (terms,), generator=generator) if slot != 1 else None for slot, n in enumerate(rows)]
    operands = [torch.randn(n, width, generator=generator, dtype=dtype) for n, width in zip(rows, plan.widths)]
    for out_slot in range(4):
        inputs = [None if slot == out_slot else operand for slot, operand in enumerate(operands)]
        expected = torch_core(plan, inputs, rowmaps, out_slot, rows[out_slot], terms)
        got = core(plan, inputs, rowmaps, out_slot, rows[out_slot], terms)
        torch.testing.assert_close(got, expected, **TOLERANCE[dtype], msg=lambda m, s=out_slot: f"output slot {s}: {m}")


LAYOUTS = ["whole-rows", "split-rows", "narrow-blocks"]


def _set_layout(monkeypatch, layout: str, backend_module) -> None:
    """split-rows: every output row split into pieces summed afterwards; narrow-blocks: channels
    processed in blocks of 2 (loops over channel blocks, masked tails)."""
    if layout == "split-rows":
        monkeypatch.setattr(_kernel_schedule, "TERMS_PER_PROGRAM", 1)
    elif layout == "narrow-blocks":
        monkeypatch.setattr(backend_module, "MAX_BLOCK_U", 2)


def _scatter_product(dtype: torch.dtype) -> TensorProduct:
    # channelwise (uvu, mul2 = 1): operand a holds only x1, so the gather is fused too
    instructions = [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (1, 0, 1, "uvu", True), (1, 1, 0, "uvu", True), (1, 1, 2, "uvu", True)]
    tp = TensorProduct("3x0e+3x1o", "1x0e+1x1o", "3x0e+3x1o+3x1e", instructions, shared_weights=False, internal_weights=False)
    assert tp._lowered.fused_gather
    return tp.to(dtype)


# ---------------------------------------------------------------- Triton, in its interpreter
# Triton decides at import time whether its library (tl.sum, ...) is interpreted, so these tests run
# in a fresh process started with TRITON_INTERPRET=1 (test_triton_kernel_in_interpreter) and skip
# in a process where triton was imported without it.


@pytest.fixture
def interpreter():
    if not triton_core.available(torch.device("cpu")):
        pytest.skip("runs in the TRITON_INTERPRET=1 subprocess of test_triton_kernel_in_interpreter")


@pytest.mark.slow
def test_triton_kernel_in_interpreter():
    if triton_core.triton is None:
        pytest.skip(triton_core.unavailable_reason())
    environment = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytest", __file__, "-q", "-k", "interpreted_triton", "-p", "no:cacheprovider"]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def test_triton_on_cpu_needs_interpreter_from_import(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_core.available(torch.device("cpu"))
    if triton_core.triton is None:
        assert "triton" in triton_core.unavailable_reason()
        return
    if not torch.cuda.is_available():
        assert "TRITON_INTERPRET" in triton_core.unavailable_reason()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_core.available(torch.device("cpu")) == triton_core._interpreter_ready()
    if not triton_core._interpreter_ready() and not torch.cuda.is_available():
        assert "before" in triton_core.unavailable_reason()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [False, True], ids=["per-sample", "shared"])
@pytest.mark.parametrize("mode", sorted(CASES))
def test_interpreted_triton_matches_reference(interpreter, mode, shared, dtype):
    tp = _product(mode, shared)
    inputs = _inputs(tp, terms=3, dtype=dtype)
    tp.backend = "reference"
    expected = _forward_and_grads(tp, inputs)
    tp.backend = "triton"
    _assert_same(_forward_and_grads(tp, inputs), expected, dtype)


@pytest.mark.parametrize("mode", CORE_MODES)
def test_interpreted_triton_core_equals_torch_core(interpreter, mode):
    _check_core_against_torch(triton_core.triton_core, mode)


@pytest.mark.parametrize("mode", MODES)
def test_interpreted_triton_random_e3nn_product(interpreter, mode):
    """Random irreps (tests/tp_cases.py, inputs l <= 1 to keep the interpreter fast), from e3nn;
    shared weights in every other mode."""
    shared = MODES.index(mode) % 2 == 1
    tp = TensorProduct.from_e3nn(random_e3nn_tensor_product(1, mode, shared, max_l=1, max_mul=2, dtype=torch.float64))
    inputs = _inputs(tp, terms=2, dtype=torch.float64)
    tp.backend = "reference"
    expected = _forward_and_grads(tp, inputs)
    tp.backend = "triton"
    _assert_same(_forward_and_grads(tp, inputs), expected, torch.float64)
    empty = _inputs(tp, terms=0, dtype=torch.float64)  # a graph without edges: e3nn's empty output
    assert tp(*empty).shape == (0, tp.irreps_out.dim)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_interpreted_triton_fused_gather_scatter(interpreter, monkeypatch, dtype, layout):
    _set_layout(monkeypatch, layout, triton_core)
    _check_scatter("triton", dtype)


def test_interpreted_triton_gradcheck(interpreter):
    instructions = [(0, 1, 1, "uvu", True), (1, 0, 1, "uvu", True), (1, 1, 0, "uvu", True)]
    tp = TensorProduct("1x0e+1x1o", "1x0e+1x1o", "1x0e+1x1o", instructions, shared_weights=False, internal_weights=False, backend="triton")
    inputs = _inputs(tp, terms=2, dtype=torch.float64)
    assert torch.autograd.gradcheck(tp, inputs)


@pytest.mark.slow
def test_triton_kernel_compiles_for_sm90():
    """Triton's NVIDIA backend lowers the kernel to a cubin without a GPU (catches type errors the
    interpreter accepts)."""
    if triton_core.triton is None:
        pytest.skip(triton_core.unavailable_reason())
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA backend")
    if triton_core._interpreting():
        pytest.skip("TRITON_INTERPRET is set: triton.jit gives the interpreter, not the compiler")
    kernel = triton_core._kernel()
    for real in ("fp32", "fp64"):
        signature = {name: "*i64" for name in ("ptr", "order", "map_x", "map_y", "map_w")}
        signature.update({name: f"*{real}" for name in ("x", "y", "w", "coefficients", "destination")})
        signature.update({name: "*i32" for name in ("groups", "entries")})
        signature.update({name: "i32" for name in ("width_x", "width_y", "width_w", "num_groups", "width_out", "out_rows", "pieces")})
        signature.update({name: "constexpr" for name in ("BLOCK_R", "BLOCK_T", "BLOCK_U")})
        for max_channels, terms_per_piece, out_rows in ((32, 30, 100), (4, 1, 1000), (128, 1, 1)):
            block_r, block_t, block_u, num_warps = triton_core.tile_sizes(max_channels, terms_per_piece, out_rows)
            constants = {"BLOCK_R": block_r, "BLOCK_T": block_t, "BLOCK_U": block_u}
            source = ASTSource(kernel, signature, constexprs=constants)
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
            assert compiled.asm["cubin"], constants


# ---------------------------------------------------------------- CUDA: compile, emulate, run


@pytest.mark.slow
def test_cuda_kernel_compiles_standalone(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found on PATH")
    result = subprocess.run([nvcc, "-O3", "-c", str(CU_SOURCE), "-o", str(tmp_path / "tp_core.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tp_core.o").stat().st_size > 0


@pytest.fixture(scope="module")
def emulated_cuda(tmp_path_factory) -> str:
    """Registers the CPU emulation of kernels/tp_core.cu as core backend "cuda-emulated"."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler for the CUDA emulation")
    library_path = tmp_path_factory.mktemp("emulator") / "tp_core_emulated.so"
    command = [compiler, "-O1", "-std=c++17", "-shared", "-fPIC", "-pthread", f"-I{CU_SOURCE.parent}", str(EMULATOR_SOURCE), "-o", str(library_path)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    library = ctypes.CDLL(str(library_path))
    library.sciml_tp_core_cuda_error.restype = ctypes.c_char_p

    def launch(ptr, order, x, y, w, map_x, map_y, map_w, groups, entries, coefficients, destination, pieces, block_u, block_rows, stream):
        function = library.sciml_tp_core_cuda_f32 if destination.dtype == torch.float32 else library.sciml_tp_core_cuda_f64

        def pointer(tensor: torch.Tensor) -> ctypes.c_void_p:
            return ctypes.c_void_p(tensor.data_ptr())

        code = function(
            ctypes.c_int64(ptr.numel() - 1), pointer(ptr), pointer(order), pointer(x), pointer(y), pointer(w),
            pointer(map_x), pointer(map_y), pointer(map_w), ctypes.c_int64(x.shape[1]), ctypes.c_int64(y.shape[1]),
            ctypes.c_int64(w.shape[1]), pointer(groups), ctypes.c_int64(groups.shape[0]), pointer(entries),
            pointer(coefficients), pointer(destination), ctypes.c_int64(destination.shape[1]), ctypes.c_int64(pieces),
            ctypes.c_int(block_u), ctypes.c_int(block_rows), ctypes.c_void_p(stream),
        )
        if code != 0:
            raise RuntimeError(library.sciml_tp_core_cuda_error(code).decode())

    register_core_backend("cuda-emulated", lambda *args: cuda.run_core(launch, *args))
    return "cuda-emulated"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [False, True], ids=["per-sample", "shared"])
@pytest.mark.parametrize("mode", sorted(CASES))
@pytest.mark.slow
def test_emulated_cuda_matches_reference(emulated_cuda, mode, shared, dtype):
    tp = _product(mode, shared, backend="reference")
    inputs = _inputs(tp, terms=5, dtype=dtype)
    expected = _forward_and_grads(tp, inputs)
    _assert_same(_forward_and_grads(_lowered(tp, emulated_cuda), inputs), expected, dtype)


@pytest.mark.parametrize("mode", CORE_MODES)
@pytest.mark.slow
def test_emulated_cuda_core_equals_torch_core(emulated_cuda, mode):
    _check_core_against_torch(core_backend(emulated_cuda), mode)


@pytest.mark.parametrize("shared", [False, True], ids=["per-sample", "shared"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
def test_emulated_cuda_random_e3nn_product(emulated_cuda, mode, shared):
    """Random irreps (tests/tp_cases.py), converted from e3nn."""
    for seed in range(2):
        tp = TensorProduct.from_e3nn(random_e3nn_tensor_product(seed, mode, shared, dtype=torch.float64))
        inputs = _inputs(tp, terms=4, dtype=torch.float64, seed=seed)
        tp.backend = "reference"
        expected = _forward_and_grads(tp, inputs)
        _assert_same(_forward_and_grads(_lowered(tp, emulated_cuda), inputs), expected, torch.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.slow
def test_emulated_cuda_fused_gather_scatter(emulated_cuda, monkeypatch, dtype, layout):
    _set_layout(monkeypatch, layout, cuda)
    _check_scatter(emulated_cuda, dtype)


@pytest.mark.slow
def test_emulated_cuda_second_derivatives(emulated_cuda):
    """Double backward (forces of a force-trained model) runs through the same kernel."""
    instructions = [(0, 1, 1, "uvu", True), (1, 0, 1, "uvu", True), (1, 1, 0, "uvu", True), (1, 1, 2, "uvu", False)]
    tp = TensorProduct("2x0e+2x1o", "1x0e+1x1o", "2x0e+2x1o+2x1e", instructions, shared_weights=False, internal_weights=False)
    inputs = _inputs(tp, terms=2, dtype=torch.float64)
    run = _lowered(tp, emulated_cuda)
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


def test_cuda_unavailable_reason_without_device():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert not cuda.available()
    assert "no CUDA device" in cuda.unavailable_reason()


# ---------------------------------------------------------------- on a device


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_DEVICE)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", sorted(CASES))
def test_device_matches_reference(backend, mode, dtype):
    if backend == "cuda" and not cuda.available():
        pytest.fail(f"cuda backend failed to build on a CUDA machine: {cuda.unavailable_reason()}")
    for shared in (False, True):
        tp = _product(mode, shared).to("cuda")
        inputs = _inputs(tp, terms=300, dtype=dtype, device="cuda")  # > TERMS_PER_PROGRAM: shared-weight
        tp.backend = "reference"  # gradients are split into pieces
        expected = _forward_and_grads(tp, inputs)
        tp.backend = backend
        _assert_same(_forward_and_grads(tp, inputs), expected, dtype, long_sums=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_DEVICE)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_device_fused_scatter_is_deterministic(backend, layout, monkeypatch):
    _set_layout(monkeypatch, layout, cuda if backend == "cuda" else triton_core)
    first = _check_scatter(backend, torch.float32, nodes=50, edges=2000, device="cuda")
    second = _check_scatter(backend, torch.float32, nodes=50, edges=2000, device="cuda")
    for a, b in zip(first, second):
        assert torch.equal(a, b), "GPU cores must be bitwise deterministic"

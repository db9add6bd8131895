"""The kernels as torch.library operators (``torch.ops.sciml``): schemas, fake implementations,
autograd of any order, autocast, tracing and compiling of force training."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from e3nn import o3
from torch.fx.experimental.proxy_tensor import make_fx

from sciml.ops import ChannelwiseTensorProduct, library, spherical_harmonics_upto, tensor_product_conv, wigner_D
from sciml.ops.cbuild import kernel_name
from sciml.ops.tensor_product import cpu

pytestmark = pytest.mark.skipif(not library.available(), reason=f"no operator library: {library.unavailable_reason()}")
OPS = Path(__file__).resolve().parents[2] / "sciml" / "ops"


def _conv(tp: ChannelwiseTensorProduct, edges: int, nodes: int, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(nodes, tp.irreps_in1.dim, dtype=dtype, generator=generator)
    sh = torch.randn(edges, tp.irreps_in2.dim, dtype=dtype, generator=generator)
    weights = torch.randn(edges, tp.weight_numel, dtype=dtype, generator=generator)
    index = torch.randint(0, nodes, (2, edges), generator=generator)
    return feats, sh, weights, index


@pytest.mark.parametrize("out_slot", [3, 0, 2])
@pytest.mark.slow
def test_tp_core_operator_passes_opcheck(out_slot):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch with dynamic
    shapes of ``sciml::tp_core``, for the forward slot and two gradient slots with row maps."""
    tp = ChannelwiseTensorProduct("3x0e+3x1o", "0e+1o", backend="cpu").double()
    lowered = tp._lowered
    feats, sh, weights, index = _conv(tp, edges=9, nodes=4)
    env = {"x1": feats, "x2": sh, "w": weights, "ones": weights.new_ones(9, 1)}
    operands = [lowered.operands[slot].build(env) for slot in range(3)] + [torch.zeros(4, lowered.plan.widths[3], dtype=torch.float64)]
    rows = [operands[slot].shape[0] for slot in range(4)]
    rowmaps = [index[1], None, None, index[0]]
    operands[out_slot] = None
    args = (*[t if t is None else t.detach().requires_grad_(True) for t in operands], *rowmaps, cpu.tables(lowered.plan),
            list(lowered.plan.widths), cpu.kernels(lowered.plan, torch.float64, 9, out_slot, True), out_slot, rows[out_slot], 9, "cpu")
    torch.library.opcheck(torch.ops.sciml.tp_core.default, args)


@pytest.mark.slow
def test_small_operators_pass_opcheck():
    points = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    from sciml.ops.sh_codegen import harmonics_kernels
    from sciml.ops.wigner import _compiled_kernels as wigner_kernels

    sh_kernels = harmonics_kernels((0, 1, 2), "component", True, torch.float64)
    torch.library.opcheck(torch.ops.sciml.spherical_harmonics.default, (points, sh_kernels, 9, [0, 1, 2], "component", True))
    torch.library.opcheck(torch.ops.sciml.spherical_harmonics_backward.default, (points.detach(), torch.randn(7, 9, dtype=torch.float64), sh_kernels, 2))
    rotations = o3.rand_matrix(5).double().requires_grad_(True)
    torch.library.opcheck(torch.ops.sciml.wigner_blocks.default, (rotations, wigner_kernels(2, torch.float64), 2))
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    columns = torch.tensor([2, 0, 1, 5, 3, 4])
    from sciml.ops.tensor_product.lowering import _gather_kernel

    torch.library.opcheck(torch.ops.sciml.permute_columns.default, (x, columns, torch.argsort(columns), _gather_kernel(torch.float64)))


def _energy(positions, feats, radial, tp, edge_index, lmax=2):
    """A small equivariant energy built from the operators: harmonics and Wigner-D of the edges,
    a fused tensor-product convolution, a scalar readout."""
    vectors = positions[edge_index[1]] - positions[edge_index[0]]
    lengths = vectors.norm(dim=1, keepdim=True)
    sh = spherical_harmonics_upto(lmax, vectors)
    frames = wigner_D(lmax, _frames(vectors))
    sh = torch.einsum("eij,ej->ei", frames, sh)  # rotated into each edge's frame and out again: exercises D
    weights = torch.tanh(lengths * radial)  # (E, weight_numel)
    out = tensor_product_conv(feats, sh, weights, edge_index, tp)
    return out[:, :4].pow(2).sum()  # the 4x0e outputs


def _frames(vectors):
    from sciml.ops import edge_rotation

    rotations = edge_rotation(vectors)
    return rotations.transpose(1, 2) @ rotations  # identity up to rounding, differentiable through both


def _system(dtype=torch.float64, atoms=6):
    generator = torch.Generator().manual_seed(1)
    positions = torch.randn(atoms, 3, dtype=dtype, generator=generator) * 2
    i, j = torch.meshgrid(torch.arange(atoms), torch.arange(atoms), indexing="ij")
    keep = i != j
    edge_index = torch.stack([i[keep], j[keep]])
    tp = ChannelwiseTensorProduct("4x0e+4x1o+4x2e", o3.Irreps.spherical_harmonics(2), backend="cpu").to(dtype)
    feats = torch.randn(atoms, tp.irreps_in1.dim, dtype=dtype, generator=generator)
    radial = torch.randn(1, tp.weight_numel, dtype=dtype, generator=generator)
    return positions, feats, radial, tp, edge_index


def _eager_forces(positions, feats, radial, tp, edge_index):
    positions = positions.detach().requires_grad_(True)
    energy = _energy(positions, feats, radial, tp, edge_index)
    (grad,) = torch.autograd.grad(energy, positions, create_graph=True)
    return energy, -grad


@pytest.mark.slow
def test_force_training_traces_through_the_operators():
    """make_fx of forces from ``torch.func.grad`` unfolds the force derivative into one graph of
    sciml operators (no Python kernels, no ctypes); the traced graph's energy, forces and
    parameter gradients of a force loss (a mixed second derivative) equal eager autograd's, for
    other atom and edge counts too (symbolic shapes). (Tracing ``torch.autograd.grad`` instead
    records the detached copies autograd saves of outputs such as tanh's, and loses part of the
    second derivative.)"""
    positions, feats, radial, tp, edge_index = _system()

    def forces(positions, feats, radial, edge_index):
        grad, energy = torch.func.grad_and_value(lambda p: _energy(p, feats, radial, tp, edge_index))(positions)
        return energy, -grad

    with torch.fx.experimental._config.patch(use_duck_shape=False):  # atom and edge counts stay symbolic
        traced = make_fx(forces, tracing_mode="symbolic", _allow_non_fake_inputs=True)(positions, feats, radial, edge_index)
    targets = {str(node.target) for node in traced.graph.nodes if node.op == "call_function"}
    assert {"sciml.tp_core.default", "sciml.spherical_harmonics.default", "sciml.wigner_blocks.default"} <= targets
    for atoms in (6, 9):
        positions, feats, radial, _, edge_index = _system(atoms=atoms)
        results = []
        for function in (lambda p, f, r, e: _eager_forces(p, f, r, tp, e), traced):
            leaf_feats, leaf_radial = feats.clone().requires_grad_(True), radial.clone().requires_grad_(True)
            energy, force = function(positions, leaf_feats, leaf_radial, edge_index)
            force.pow(2).sum().backward()
            results.append((energy, force, leaf_feats.grad, leaf_radial.grad))
        for eager, graph in zip(*results):
            torch.testing.assert_close(graph, eager, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_operators_compile_without_graph_breaks():
    """torch.compile(fullgraph=True, dynamic=True) through the operators, forward and gradient."""
    positions, feats, radial, tp, edge_index = _system()
    _energy(positions, feats, radial, tp, edge_index)  # warm the kernel caches, which dynamo reads as constants
    torch._dynamo.reset()
    compiled = torch.compile(lambda p, f, r, e: _energy(p, f, r, tp, e), fullgraph=True, dynamic=True, backend="aot_eager")
    leaf = radial.clone().requires_grad_(True)
    energy = compiled(positions, feats, leaf, edge_index)
    energy.backward()
    expected_leaf = radial.clone().requires_grad_(True)
    expected = _energy(positions, feats, expected_leaf, tp, edge_index)
    expected.backward()
    torch.testing.assert_close(energy, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(leaf.grad, expected_leaf.grad, rtol=1e-12, atol=1e-12)


def test_autocast_runs_the_kernels_in_float32():
    """Under bf16 autocast the tensor product runs the compiled kernel in float32 (the operator's
    autocast rule) instead of the bf16 reference, so it is as accurate as float32."""
    tp = ChannelwiseTensorProduct("8x0e+8x1o", "0e+1o")
    feats, sh, weights, index = _conv(tp, edges=40, nodes=10, dtype=torch.float32)
    exact = tensor_product_conv(feats.double(), sh.double(), weights.double(), index, tp.double())
    tp.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tensor_product_conv(feats.bfloat16(), sh.bfloat16(), weights.bfloat16(), index, tp)
    assert out.dtype == torch.float32
    bf16_inputs = [t.bfloat16().double() for t in (feats, sh, weights)]
    torch.testing.assert_close(out.double(), tensor_product_conv(*bf16_inputs, index, tp.double()), rtol=1e-5, atol=1e-5)
    assert (out.double() - exact).abs().max() < 0.1


def test_specialised_kernels_reach_the_gradient_slots(monkeypatch):
    """With specialised kernels every slot's kernel is passed to the operator, so the backward
    (the same operator on the gradient slots) runs them too; values equal the generic kernel's."""
    tp = ChannelwiseTensorProduct("16x0e+16x1o", "0e+1o", backend="cpu").double()
    feats, sh, weights, index = _conv(tp, edges=30, nodes=8)
    results = []
    for mode in ("never", "always"):
        monkeypatch.setenv("SCIML_CPU_SPECIALISE", mode)
        leaves = [t.clone().requires_grad_(True) for t in (feats, sh, weights)]
        out = tensor_product_conv(*leaves, index, tp)
        out.pow(2).sum().backward()
        results.append([out, *[leaf.grad for leaf in leaves]])
    kernels = cpu.kernels(tp._lowered.plan, torch.float64, 30, 3, True).splitlines()
    assert len(set(kernels)) == 5 and all("specialised" in line for line in kernels)  # 4 slots, one-pass gradients
    for generic, specialised in zip(*results):
        torch.testing.assert_close(specialised, generic, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_no_ctypes_or_raw_pointers_in_the_ops():
    """The kernels are reached only through torch.ops.sciml: no ctypes, no data_ptr in Python."""
    for path in OPS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {node.names[0].name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) and node.names}
        modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "ctypes" not in names | modules, f"{path} imports ctypes"
        attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        assert "data_ptr" not in attributes, f"{path} reads raw data pointers"


def test_a_missing_kernel_library_is_a_clear_error(tmp_path):
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="cannot load the kernel library"):
        torch.ops.sciml.permute_columns(x, torch.arange(4), torch.arange(4), f"{tmp_path}/missing.so:sciml_gather_f64")
    source = "void f(void) {}"
    with pytest.raises(RuntimeError, match="kernel sciml_gather_f64 not found"):
        torch.ops.sciml.permute_columns(x, torch.arange(4), torch.arange(4), kernel_name(source, "sciml_gather_f64"))


def test_python_backends_keep_their_autograd():
    """The torch backend (pure Python) and the operator give the same values and gradients."""
    tp = ChannelwiseTensorProduct("4x0e+4x1o", "0e+1o").double()
    feats, sh, weights, index = _conv(tp, edges=12, nodes=5)
    results = []
    for backend in ("torch", "cpu"):
        tp.backend = backend
        leaves = [t.clone().requires_grad_(True) for t in (feats, sh, weights)]
        out = tensor_product_conv(*leaves, index, tp)
        grads = torch.autograd.grad(out.pow(2).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), leaves)
        results.append([out, *grads, *second])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

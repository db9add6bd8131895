"""sciml's tensor products, Linear and patch_e3nn as an e3nn user meets them: e3nn's API
(arguments, attributes, methods, exception types, state dicts, TorchScript tracing), empty and
zero-width inputs, and the patch on e3nn's own modules."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from e3nn import o3
from e3nn.util.jit import compile as e3nn_compile

import sciml.ops as so
from sciml.ops.tensor_product import cpu
from tp_cases import MODES, e3nn_module, random_e3nn_tensor_product

BACKENDS = ["reference", "torch"] + (["cpu"] if cpu.available() else [])
F64 = torch.float64


def ours_like(e3nn_tp: torch.nn.Module, cls=so.TensorProduct, backend=None, **overrides) -> so.TensorProduct:
    """The sciml module built with the e3nn module's own arguments (not converted), same weights."""
    ins = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in e3nn_tp.instructions]
    kwargs = dict(shared_weights=e3nn_tp.shared_weights, internal_weights=e3nn_tp.internal_weights, backend=backend)
    kwargs.update(overrides)
    ours = cls(e3nn_tp.irreps_in1, e3nn_tp.irreps_in2, e3nn_tp.irreps_out, ins, **kwargs).to(F64)
    ours.load_state_dict(e3nn_tp.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
def test_empty_batches_and_zero_width_irreps_for_every_mode(mode, backend):
    """A batch of 0 and irreps without components give e3nn's shapes, zeros, and gradients."""
    e3nn_tp = random_e3nn_tensor_product(0, mode, shared=False, dtype=F64)
    ours = ours_like(e3nn_tp, backend=backend)
    x1 = torch.randn(0, ours.irreps_in1.dim, dtype=F64, requires_grad=True)
    x2 = torch.randn(0, ours.irreps_in2.dim, dtype=F64, requires_grad=True)
    w = torch.randn(0, ours.weight_numel, dtype=F64, requires_grad=True)
    out = ours(x1, x2, w)
    assert out.shape == e3nn_tp(x1, x2, w).shape == (0, ours.irreps_out.dim)
    grads = torch.autograd.grad(out.sum(), [x1, x2, w], allow_unused=True)
    assert all(g is None or g.shape == t.shape for g, t in zip(grads, [x1, x2, w]))
    assert ours.right(x2, w).shape == (0, ours.irreps_in1.dim, ours.irreps_out.dim)
    # zero multiplicities inside the irreps, and inputs with no components at all
    narrowed = o3.TensorProduct("0x0e + 1o + 2e", "0e + 1o + 2e", "0x0e + 1o", [(0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True)])
    ours = so.TensorProduct("0x0e + 1o + 2e", "0e + 1o + 2e", "0x0e + 1o", [(0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True)],
                            backend=backend)
    assert ours(torch.randn(4, 8), torch.randn(4, 9)).eq(0).all() and ours.weight_numel == narrowed.weight_numel
    for irreps in ("", "0x0e"):
        tp = so.FullyConnectedTensorProduct("0e + 1e", irreps, "0e + 1e", backend=backend)
        assert tp(torch.randn(1, 2, 4), torch.randn(2, 1, 0)).shape == (2, 2, 4)
    tp = so.FullyConnectedTensorProduct("0e+1o", "0e+1o", "0e+1o", backend=backend)
    x = torch.randn(0, 4, requires_grad=True)
    out = tp(x, torch.randn(0, 4))
    out.sum().backward()
    assert out.shape == (0, 4) and x.grad.shape == (0, 4) and tp.weight.grad.eq(0).all()
    assert tp(torch.randn(2, 1, 0, 1, 4), torch.randn(1, 2, 0, 3, 4)).shape == (2, 2, 0, 3, 4)
    assert tp.right(torch.randn(1, 2, 0, 3, 4)).shape == (1, 2, 0, 3, 4, 4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.slow
def test_api_attributes_and_methods_equal_e3nn(mode):
    """output_mask, right(), weight views, per-instruction weight lists, instructions, repr."""
    e3nn_tp = random_e3nn_tensor_product(1, mode, shared=True, dtype=F64)
    ours = ours_like(e3nn_tp)
    assert torch.equal(ours.output_mask, e3nn_tp.output_mask.to(ours.output_mask.dtype))
    assert [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, i.path_shape) for i in ours.instructions] == [
        (i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, i.path_shape) for i in e3nn_tp.instructions]
    assert [i.path_weight for i in ours.instructions] == pytest.approx([i.path_weight for i in e3nn_tp.instructions], rel=1e-12)
    assert repr(ours) == repr(e3nn_tp)
    x1, x2 = ours.irreps_in1.randn(3, -1, dtype=F64), ours.irreps_in2.randn(3, -1, dtype=F64)
    if mode not in ("uvu<v", "u<vw"):  # (e3nn has no right() for the pair modes)
        with_right = e3nn_module(lambda: o3.TensorProduct(e3nn_tp.irreps_in1, e3nn_tp.irreps_in2, e3nn_tp.irreps_out,
                                                          [tuple(i[:5]) for i in ours.raw_instructions], compile_right=True), F64)
        with_right.load_state_dict(e3nn_tp.state_dict(), strict=False)  # (its right() adds constants)
        torch.testing.assert_close(ours.right(x2), with_right.right(x2), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.einsum("zi,zik->zk", x1, ours.right(x2)), ours(x1, x2), rtol=1e-10, atol=1e-10)
    if ours.weight_numel:
        for (i, ins, view), (j, _, theirs) in zip(ours.weight_views(yield_instruction=True),
                                                  e3nn_tp.weight_views(yield_instruction=True)):
            assert i == j and torch.equal(view, theirs) and view.shape == ins.path_shape
        blocks = [view.clone() for view in ours.weight_views()]
        torch.testing.assert_close(ours(x1, x2, blocks), ours(x1, x2), rtol=0, atol=0)
        with torch.no_grad():
            for view in ours.weight_views():
                view.zero_()
        weighted = {i.i_out for i in ours.instructions if i.has_weight} - {i.i_out for i in ours.instructions if not i.has_weight}
        for i_out in weighted:  # outputs written only by weighted paths vanish
            assert ours(x1, x2)[:, ours.irreps_out.slices()[i_out]].eq(0).all()
    # per-sample weights: views and block lists carry the batch dimensions
    unshared = random_e3nn_tensor_product(1, mode, shared=False, dtype=F64)
    ours = ours_like(unshared)
    if ours.weight_numel:
        w = torch.randn(3, ours.weight_numel, dtype=F64)
        blocks = list(ours.weight_views(w))
        assert all(b.shape[0] == 3 for b in blocks)
        torch.testing.assert_close(ours(x1, x2, blocks), unshared(x1, x2, w), rtol=1e-10, atol=1e-10)


def test_positional_arguments_codegen_switches_and_e3nn_exception_types():
    irreps = o3.Irreps("2x0e + 1o")
    ins = [(0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True)]
    args = (irreps, irreps, "3x0e", ins, None, None, None, "norm", "path", False, False, True, True)
    ours = so.TensorProduct(*args, _specialized_code=False, _optimize_einsums=False)
    theirs = o3.TensorProduct(*args)
    assert (ours.shared_weights, ours.internal_weights, ours._specialized_code) == (False, False, False)
    w, x = torch.randn(5, ours.weight_numel), irreps.randn(5, -1)
    torch.testing.assert_close(ours(x, x, w), theirs(x, x, w))
    # what e3nn raises (and e3nn code catches) for the same mistakes
    with pytest.raises(AssertionError):  # parity violation: also a ValueError
        so.TensorProduct("0e", "0e", "0o", [(0, 0, 0, "uvw", True)])
    with pytest.raises(ValueError):
        so.TensorProduct("0e", "0e", "0o", [(0, 0, 0, "uvw", True)])
    with pytest.raises(IndexError):
        so.TensorProduct("0e", "0e", "0e", [(1, 0, 0, "uvw", True)])
    with pytest.raises(RuntimeError):  # no internal weights and none given
        ours(x, x)
    with pytest.raises(AssertionError):
        so.Linear("0e", "1e", biases=[True])
    with pytest.raises(IndexError):
        so.Linear("4x0e + 3x4o", "1x2e + 4x0e", instructions=[(4, 0)])
    with pytest.raises(ValueError):
        so.Linear("4x0e + 3x4o", "1x2e + 4x0e", instructions=[(0, 0)])
    with pytest.warns(DeprecationWarning):
        so.FullyConnectedTensorProduct("0e", "0e", "0e", normalization="norm")


def _state_dict_round_trip(theirs: torch.nn.Module, ours: torch.nn.Module, *inputs) -> None:
    ours.load_state_dict(theirs.state_dict(), strict=True)
    torch.testing.assert_close(ours(*inputs), theirs(*inputs), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(theirs(*inputs), ours(*inputs), rtol=1e-10, atol=1e-10)
    reloaded = torch.load(io.BytesIO(_saved(ours.state_dict())), weights_only=True)
    theirs.load_state_dict(reloaded, strict=True)


def _saved(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.slow
def test_state_dicts_load_both_ways_and_the_named_products_equal_e3nn():
    """Every named product and Linear: same irreps, outputs and weights as e3nn's, and each loads
    the other's state dict with strict=True (e3nn's code-generation constants included)."""
    torch.manual_seed(0)
    a, b = o3.Irreps("3x0e + 2x1o + 2x2e"), o3.Irreps("0e + 2x1o + 2x1e")
    x, y = a.randn(6, -1, dtype=F64), b.randn(6, -1, dtype=F64)
    cases = [
        ("FullyConnectedTensorProduct", (a, b, "2x0e + 3x1o + 1x2e"), (x, y)),
        ("FullTensorProduct", (a, b), (x, y)),
        ("FullTensorProduct", (a, b, ["0e", "1o"]), (x, y)),
        ("ElementwiseTensorProduct", ("3x0e + 4x1o", "5x1e + 2x0o"), None),
        ("TensorSquare", (a,), (x,)),
        ("TensorSquare", (a, "2x0e + 3x1o + 2x2e + 1e"), (x,)),
        ("Linear", (a, "4x0e + 1x1o + 3x2e"), (x,)),
        ("Linear", ("2x0e + 1e + 2x0e + 0o", "3x0e + 1e + 3x0e + 5x0e + 0o"), None),
    ]
    for name, args, inputs in cases:
        kwargs = {"biases": True} if name == "Linear" else {}
        theirs = e3nn_module(lambda: getattr(o3, name)(*args, **kwargs), F64)
        ours = getattr(so, name)(*args, **kwargs).to(F64)
        assert ours.irreps_out == theirs.irreps_out and ours.weight_numel == theirs.weight_numel, name
        if inputs is None:
            first = getattr(theirs, "irreps_in1", getattr(theirs, "irreps_in", None))
            inputs = (first.randn(6, -1, dtype=F64),) + ((theirs.irreps_in2.randn(6, -1, dtype=F64),) if name != "Linear" else ())
        _state_dict_round_trip(theirs, ours, *inputs)


@pytest.mark.parametrize("shared", [True, False])
def test_linear_equals_e3nn_with_channels_biases_and_per_sample_weights(shared):
    kwargs = dict(shared_weights=shared) if shared else dict(shared_weights=False)
    for irreps_in, irreps_out, extra in [("4x0e + 3x1o + 2x0e", "2x1o + 8x0e", {}),
                                         ("0e + 1e + 2e", "0e + 2x1e + 2e", dict(f_in=5, f_out=3)),
                                         ("2x1o + 0x3e", "5x0e + 0x1o", {}),
                                         ("4x0e + 3x1o", "2x1o + 8x0e", dict(instructions=[(0, 1)]))]:
        theirs = e3nn_module(lambda: o3.Linear(irreps_in, irreps_out, **kwargs, **extra), F64)
        ours = so.Linear(irreps_in, irreps_out, **kwargs, **extra).to(F64)
        ours.load_state_dict(theirs.state_dict(), strict=True)
        shape = (7,) + ((extra["f_in"],) if "f_in" in extra else ()) + (ours.irreps_in.dim,)
        x = torch.randn(*shape, dtype=F64, requires_grad=True)
        args = (x,) if shared else (x, torch.randn(7, *((5, 3) if "f_in" in extra else ()), ours.weight_numel, dtype=F64))
        out, expected = ours(*args), theirs(*args)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        if expected.requires_grad:  # (an output no instruction writes is constant, in e3nn too)
            torch.testing.assert_close(torch.autograd.grad(out.square().sum(), x)[0],
                                       torch.autograd.grad(expected.square().sum(), x)[0], rtol=1e-12, atol=1e-12)
        assert torch.equal(ours.output_mask, theirs.output_mask.to(ours.output_mask.dtype))
        if shared and ours.weight_numel:
            assert [v.shape for v in ours.weight_views()] == [v.shape for v in theirs.weight_views()]


def test_e3nn_jit_compile_traces_with_dynamic_batches_and_gradients():
    """e3nn.util.jit.compile (how e3nn code makes TorchScript) traces sciml's modules: any batch
    size afterwards, gradients of any order, torch.jit.save / load in the process."""
    tp = so.FullyConnectedTensorProduct("2x0e + 1o", "0e + 1o", "3x0e + 2x1o").to(F64)
    linear = so.Linear("2x0e + 1o", "3x0e + 1o", biases=True).to(F64)
    sh = so.SphericalHarmonics([0, 1, 2], True)
    traced_tp, traced_linear, traced_sh = (e3nn_compile(m, in_place=False) for m in (tp, linear, sh))
    x = torch.randn(9, 5, dtype=F64, requires_grad=True)
    y = torch.randn(9, 4, dtype=F64, requires_grad=True)
    torch.testing.assert_close(traced_tp(x, y), tp(x, y), rtol=0, atol=0)
    torch.testing.assert_close(traced_tp.right(y), tp.right(y), rtol=0, atol=0)
    torch.testing.assert_close(traced_linear(x), linear(x), rtol=0, atol=0)
    torch.testing.assert_close(traced_sh(y[:, 1:]), sh(y[:, 1:]), rtol=0, atol=0)
    (g1,) = torch.autograd.grad(traced_tp(x, y).square().sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(tp(x, y).square().sum(), x, create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(g1.sum(), y)[0], torch.autograd.grad(g2.sum(), y)[0], rtol=1e-12, atol=1e-12)
    (w1,) = torch.autograd.grad(traced_tp(x, y).sum(), traced_tp.weight)  # (a copy: in_place=False)
    (w2,) = torch.autograd.grad(tp(x, y).sum(), tp.weight)
    torch.testing.assert_close(w1, w2, rtol=1e-12, atol=1e-12)
    buffer = io.BytesIO()
    torch.jit.save(traced_tp, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x[:2], y[:2]), tp(x[:2], y[:2]), rtol=0, atol=0)
    with pytest.raises(RuntimeError):  # bad shapes still fail inside the trace
        traced_tp(x[:, :3], y)


@pytest.mark.slow
def test_patch_e3nn_swaps_everywhere_and_undoes():
    """The patch reaches e3nn.o3, e3nn's submodules and names imported elsewhere; e3nn modules
    built under it (e3nn's own Norm, Gate) run on sciml and give e3nn's numbers."""
    import e3nn.nn
    import e3nn.o3._norm as norm_module

    originals = {name: getattr(o3, name) for name in so.e3nn_patch.REPLACEMENTS}
    here = {"TensorProduct": o3.TensorProduct}
    plain_norm = e3nn_module(lambda: o3.Norm("3x0e + 2x1o + 2e"), F64)
    with so.patch_e3nn() as patch:
        assert o3.TensorProduct is so.TensorProduct and o3.Linear is so.Linear
        assert o3.spherical_harmonics is so.spherical_harmonics
        assert norm_module.TensorProduct is so.TensorProduct  # bound by `from ... import` in e3nn
        with pytest.raises(RuntimeError, match="already patched"):
            so.patch_e3nn()
        norm = o3.Norm("3x0e + 2x1o + 2e").to(F64)
        assert isinstance(norm.tp, so.TensorProduct)
        x = norm.irreps_in.randn(5, -1, dtype=F64)
        torch.testing.assert_close(norm(x), plain_norm(x), rtol=1e-12, atol=1e-12)
        gate = e3nn.nn.Gate("4x0e", [torch.tanh], "2x0e", [torch.sigmoid], "2x1o")
        assert gate(gate.irreps_in.randn(3, -1)).shape == (3, gate.irreps_out.dim)
        assert patch.active
    assert not patch.active
    assert all(getattr(o3, name) is original for name, original in originals.items())
    assert norm_module.TensorProduct is here["TensorProduct"]
    patch = so.patch_e3nn()
    patch.undo()
    patch.undo()  # idempotent
    assert o3.TensorProduct is here["TensorProduct"]


def test_pickled_and_copied_modules_keep_working_after_a_trace():
    tp = so.TensorProduct("10x0e", "10x0e", "45x0e", [(0, 0, 0, "uvu<v", False)])
    e3nn_compile(tp, in_place=False)
    copy = pickle.loads(pickle.dumps(tp))
    x, y = torch.randn(2, 10), torch.randn(2, 10)
    torch.testing.assert_close(copy(x, y), tp(x, y))
    reference = o3.TensorProduct("10x0e", "10x0e", "45x0e", [(0, 0, 0, "uvu<v", False)])
    torch.testing.assert_close(tp(x, y), reference(x, y))

import pytest
import torch
from e3nn import o3

from sciml.ops.irreps import default_dtype
from sciml.ops import SO2Convolution, SO2Linear, edge_rotation, from_m_major, to_m_major, wigner_D
from sciml.ops.gaunt import channels_to_mul_ir, mul_ir_to_channels
from sciml.ops.so2 import (
    edge_tensor_product_paths,
    m_major_index,
    m_major_order,
    rotate_from_edge_frame,
    rotate_to_edge_frame,
)
from sciml.ops.wigner import wigner_D_blocks
from sciml.testing.irreps import assert_irreps_equivariant


def fairchem_m_major(lmax, mmax):
    """fairchem's to_m order, re-derived: scan l-major (m truncated) for m, then for -m."""
    l_major = [(l, m) for l in range(lmax + 1) for m in range(-min(l, mmax), min(l, mmax) + 1)]
    order = []
    for m in range(mmax + 1):
        order += [lm for lm in l_major if lm[1] == m]
        if m:
            order += [lm for lm in l_major if lm[1] == -m]
    return order


@pytest.mark.parametrize("lmax, mmax", [(0, 0), (2, 1), (3, 3), (6, 2)])
def test_m_major_order_matches_fairchem_and_round_trips(lmax, mmax):
    assert list(m_major_order(lmax, mmax)) == fairchem_m_major(lmax, mmax)
    assert m_major_order(2, 1) == ((0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (1, -1), (2, -1))
    x = torch.randn(4, (lmax + 1) ** 2, 3)
    y = to_m_major(x, lmax, mmax)
    assert y.shape == (4, len(m_major_index(lmax, mmax)), 3)
    back = from_m_major(y, lmax, mmax)
    kept = torch.tensor([abs(m) <= mmax for l in range(lmax + 1) for m in range(-l, l + 1)])
    assert torch.equal(back[:, kept], x[:, kept]) and torch.all(back[:, ~kept] == 0)
    assert torch.equal(
        from_m_major(to_m_major(x.transpose(1, 2), lmax, mmax, dim=-1), lmax, mmax, dim=-1), back.transpose(1, 2)
    )


def fairchem_style_linear(layer, x, radial=None):
    """SO2Linear as fairchem's SO2_Convolution computes it: fc on (x_+, x_-), then recombine."""
    edges, lmax = x.shape[0], layer.lmax
    x0 = x[:, : lmax + 1].reshape(edges, -1)
    offset_rad = x0.shape[1]
    if radial is not None:
        x0 = x0 * radial[:, :offset_rad]
    out0 = layer.fc_m0(x0)
    extra, out0 = out0[:, : layer.extra_m0_output_channels], out0[:, layer.extra_m0_output_channels :]
    outs, offset = [out0.reshape(edges, lmax + 1, -1)], lmax + 1
    for m in range(1, layer.mmax + 1):
        n = lmax - m + 1
        xm = x[:, offset : offset + 2 * n].reshape(edges, 2, -1)
        if radial is not None:
            xm = xm * radial[:, offset_rad : offset_rad + xm.shape[2]].unsqueeze(1)
            offset_rad += xm.shape[2]
        y = xm @ layer.fc_m[m - 1].weight.t()
        half = y.shape[2] // 2
        y_r, y_i = y[..., :half], y[..., half:]
        out = torch.cat([y_r[:, :1] - y_i[:, 1:], y_r[:, 1:] + y_i[:, :1]], dim=1)  # (+m, -m)
        outs.append(out.reshape(edges, 2 * n, -1))
        offset += 2 * n
    return torch.cat(outs, 1), extra


@pytest.mark.parametrize("radial", [False, True])
def test_so2_linear_matches_fairchem_convention(radial):
    torch.manual_seed(0)
    layer = SO2Linear(3, 2, in_channels=4, out_channels=5, extra_m0_output_channels=6).double()
    x = torch.randn(7, len(m_major_order(3, 2)), 4, dtype=torch.float64)
    r = torch.randn(7, layer.radial_features, dtype=torch.float64) if radial else None
    assert layer.radial_features == 4 * (4 + 3 + 2)
    out, extra = layer(x, r)
    ref_out, ref_extra = fairchem_style_linear(layer, x, r)
    assert out.shape == (7, x.shape[1], 5) and extra.shape == (7, 6)
    assert torch.allclose(out, ref_out, atol=1e-13) and torch.allclose(extra, ref_extra, atol=1e-13)
    assert [p.shape for p in layer.fc_m0.parameters()] == [(6 + 4 * 5, 4 * 4), (6 + 4 * 5,)]
    assert [fc.weight.shape for fc in layer.fc_m] == [(2 * 3 * 5, 3 * 4), (2 * 2 * 5, 2 * 4)]


@pytest.fixture
def float64_default():
    """e3nn builds its Clebsch-Gordan buffers in the default dtype: float64 for exact references."""
    with default_dtype(torch.float64):
        yield


@pytest.mark.parametrize("lmax, sh_lmax, c_in, c_out", [(1, 2, 3, 2), (2, 2, 2, 3), (3, 1, 2, 2), (4, 4, 1, 2)])
@pytest.mark.parametrize("blocks", [False, True])
def test_convolution_equals_e3nn_tensor_product(lmax, sh_lmax, c_in, c_out, blocks, float64_default):
    torch.manual_seed(lmax)
    irreps_in = o3.Irreps([(c_in, (l, (-1) ** l)) for l in range(lmax + 1)])
    irreps_out = o3.Irreps([(c_out, (l, (-1) ** l)) for l in range(lmax + 1)])
    tp = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps.spherical_harmonics(sh_lmax), irreps_out)
    conv = SO2Convolution.from_edge_tensor_product(lmax, c_in, c_out, edge_tensor_product_paths(tp))
    edges = torch.randn(9, 3, dtype=torch.float64)
    edges[0] = torch.tensor([0.0, -2.0, 0.0])  # along -y: the frame's flipped chart
    x = torch.randn(9, (lmax + 1) ** 2, c_in, dtype=torch.float64)
    rot = edge_rotation(edges)
    wigner = wigner_D_blocks(lmax, rot) if blocks else wigner_D(lmax, rot)
    sh = o3.spherical_harmonics(list(range(sh_lmax + 1)), edges, True, "component")
    expected = tp(channels_to_mul_ir(x), sh)
    assert (channels_to_mul_ir(conv(x, wigner)) - expected).abs().max() < 1e-12 * (1 + expected.abs().max())


def test_convolution_is_equivariant_with_truncation_radial_and_extra():
    torch.manual_seed(1)
    lmax, mmax = 4, 2
    conv = SO2Convolution(lmax, mmax, in_channels=3, out_channels=2, extra_m0_output_channels=4).double()
    radial = torch.randn(20, conv.radial_features, dtype=torch.float64)

    def convolve(x, edges):  # x: 3 channels of degrees 0..lmax, e3nn's flat layout
        out, extra = conv(mul_ir_to_channels(x, lmax, 3), wigner_D_blocks(lmax, edge_rotation(edges)), radial)
        return torch.cat([channels_to_mul_ir(out), extra], 1)

    features = o3.Irreps([(3, (l, (-1) ** l)) for l in range(lmax + 1)])
    out = o3.Irreps([(2, (l, (-1) ** l)) for l in range(lmax + 1)]) + o3.Irreps("4x0e")
    # SO(3) only: an SO(2) (eSCN) convolution is not equivariant under reflections
    assert_irreps_equivariant(convolve, [features, "1o"], out, atol=1e-12, batch=20, parity=False)


def test_rotate_back_rescales_dropped_degrees_like_fairchem():
    lmax, mmax = 3, 1
    rot = edge_rotation(torch.randn(5, 3, dtype=torch.float64))
    wigner = wigner_D(lmax, rot)
    x = torch.randn(5, 16, 2, dtype=torch.float64)
    y = rotate_to_edge_frame(x, wigner, lmax, mmax)
    assert torch.allclose(y, to_m_major(wigner @ x, lmax, mmax), atol=1e-13)
    plain = rotate_from_edge_frame(y, wigner, lmax, mmax, rescale=False)
    assert torch.allclose(plain, wigner.transpose(1, 2) @ from_m_major(y, lmax, mmax), atol=1e-13)
    scaled = rotate_from_edge_frame(y, wigner, lmax, mmax)
    for l in range(lmax + 1):
        factor = ((2 * l + 1) / 3) ** 0.5 if l > mmax else 1.0
        assert torch.allclose(scaled[:, l * l : (l + 1) ** 2], factor * plain[:, l * l : (l + 1) ** 2], atol=1e-13)


@pytest.mark.slow
def test_gradients_reach_inputs_weights_and_geometry():
    torch.manual_seed(2)
    conv = SO2Convolution(2, 1, in_channels=2, out_channels=2).double()
    edges = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 9, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e, f: conv(f, wigner_D(2, edge_rotation(e))), (edges, x))
    conv(x, wigner_D(2, edge_rotation(edges))).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())


def test_bad_input_raises():
    conv = SO2Convolution(2, 1, in_channels=3, out_channels=2)
    wigner = wigner_D(2, torch.eye(3).expand(4, 3, 3))
    with pytest.raises(ValueError, match="mmax must be an int in 0..lmax=2"):
        SO2Linear(2, 3)
    with pytest.raises(ValueError, match="lmax must be an int >= 0"):
        SO2Convolution(-1)
    with pytest.raises(ValueError, match=r"x must have shape \(E, 9, C\)"):
        conv(torch.zeros(4, 8, 3), wigner)
    with pytest.raises(ValueError, match=r"x must have shape \(E, 7, 3\)"):
        conv.linear(torch.zeros(4, 9, 3))
    with pytest.raises(ValueError, match=r"wigner must have shape \(4, 9, 9\)"):
        conv(torch.zeros(4, 9, 3), wigner[:, :4, :4])
    with pytest.raises(ValueError, match="wigner blocks"):
        conv(torch.zeros(4, 9, 3), wigner_D_blocks(1, torch.eye(3).expand(4, 3, 3)))
    with pytest.raises(ValueError, match=r"radial must have shape \(4, 15\)"):
        conv(torch.zeros(4, 9, 3), wigner, torch.zeros(4, 14))
    with pytest.raises(ValueError, match="size 9 along dim -2"):
        to_m_major(torch.zeros(4, 8, 3), 2)
    tp = o3.FullyConnectedTensorProduct("2x0e+2x1o", "1x0e+1x1o", "2x0e+2x2e")
    with pytest.raises(ValueError, match="output irreps"):
        edge_tensor_product_paths(tp)


@pytest.mark.slow
def test_bench_rows_have_the_documented_keys(monkeypatch):
    import sciml.bench.so3 as bench

    monkeypatch.setattr(bench, "_ms", lambda fn, repeats: (fn(), 1.0)[1])  # run once, skip timing
    rows = bench.so3_rows(num=20, repeats=1)
    assert len(rows) == 22
    assert all(set(r) == {"op", "case", "sciml_ms", "e3nn_ms", "speedup"} for r in rows)
    assert "speedup" in bench.format_so3_table(rows)


def test_empty_inputs():
    conv = SO2Convolution(2, 1, in_channels=3, out_channels=2, extra_m0_output_channels=2)
    wigner = wigner_D(2, edge_rotation(torch.zeros(0, 3)))
    out, extra = conv(torch.zeros(0, 9, 3), wigner, torch.zeros(0, conv.radial_features))
    assert out.shape == (0, 9, 2) and extra.shape == (0, 2)


import pytest
import torch
from e3nn import o3

from sciml.ops.irreps import default_dtype
from sh_backends import backend, has_compiler  # noqa: F401  (backend is a fixture)
from sciml.ops import edge_rotation, spherical_harmonics_upto, wigner_D
from sciml.ops.cbuild import kernel_name
from sciml.ops.wigner import _c_source, wigner_D_blocks




def e3nn_wigner(lmax, rot):
    """e3nn's D_from_matrix, exact to float64 only when its generators are built in float64."""
    with default_dtype(torch.float64):
        return o3.Irreps.spherical_harmonics(lmax).D_from_matrix(rot)


def rotations(n, seed=0, improper=False, dtype=torch.float64):
    torch.manual_seed(seed)
    rot = o3.rand_matrix(n, dtype=torch.float64).to(dtype)
    if improper:
        rot[::2] = -rot[::2]
    return rot


@pytest.mark.parametrize("lmax", [0, 1, 2, 4, 6, 8])
def test_equals_e3nn_including_improper(backend, lmax):
    rot = rotations(12, improper=True)
    ours = wigner_D(lmax, rot)
    theirs = e3nn_wigner(lmax, rot)
    assert ours.shape == (12, (lmax + 1) ** 2, (lmax + 1) ** 2)
    assert (ours - theirs).abs().max() < 1e-12


def test_float32_accuracy(backend):
    rot = rotations(50, improper=True)
    ours = wigner_D(8, rot.float())
    assert ours.dtype == torch.float32
    assert (ours.double() - e3nn_wigner(8, rot)).abs().max() < 1e-5


def test_orthogonal_representation(backend):
    r1, r2 = rotations(6, 1, improper=True), rotations(6, 2, improper=True)
    d1, d2 = wigner_D(6, r1), wigner_D(6, r2)
    eye = torch.eye(49, dtype=torch.float64)
    assert (d1 @ d1.transpose(1, 2) - eye).abs().max() < 1e-12
    assert (wigner_D(6, r1 @ r2) - d1 @ d2).abs().max() < 1e-12
    assert (wigner_D(6, r1.transpose(1, 2)) - d1.transpose(1, 2)).abs().max() < 1e-12


@pytest.mark.slow
def test_blocks_batch_shape_and_gradients(backend):
    rot = rotations(6).view(2, 3, 3, 3)
    dense = wigner_D(3, rot)
    assert dense.shape == (2, 3, 16, 16)
    for l, block in enumerate(wigner_D_blocks(3, rot)):
        assert block.shape == (2, 3, 2 * l + 1, 2 * l + 1) and block.is_contiguous()
        assert torch.equal(block, dense[..., l * l : (l + 1) ** 2, l * l : (l + 1) ** 2])
    assert [b.shape for b in wigner_D_blocks(1, torch.zeros(0, 3, 3))] == [(0, 1, 1), (0, 3, 3)]
    small = rotations(2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: wigner_D(2, r), (small,))
    # second derivatives (the compiled path recomputes with torch operations for those)
    assert torch.autograd.gradgradcheck(lambda r: wigner_D_blocks(2, r)[2], (small,))
    # the gradient over many rotations and OpenMP threads equals the torch path's
    many = rotations(301, improper=True).requires_grad_(True)
    weights = [torch.randn(301, 2 * l + 1, 2 * l + 1, dtype=torch.float64) for l in range(5)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (grad,) = torch.autograd.grad(sum((b * w).sum() for b, w in zip(wigner_D_blocks(4, many), weights)), many)
    finally:
        torch.set_num_threads(threads)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCIML_SH_BACKEND", "torch")
        (ref,) = torch.autograd.grad(sum((b * w).sum() for b, w in zip(wigner_D_blocks(4, many), weights)), many)
    assert (grad - ref).abs().max() < 1e-12 * ref.abs().max()


@pytest.mark.skipif(not has_compiler(), reason="no C compiler")
@pytest.mark.parametrize("vbytes", [16, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_kernel_at_every_simd_width(monkeypatch, vbytes, dtype):
    """The generated source forced to each vector width (LANES = 2..16): transposes, tails."""
    monkeypatch.setenv("SCIML_SH_BACKEND", "torch")
    lmax, e = 3, 37
    source = f"#define VBYTES {vbytes}\n" + _c_source(lmax, "float" if dtype == torch.float32 else "double")
    kernels = "\n".join(kernel_name(source, name) for name in ("sciml_wigner_forward", "sciml_wigner_backward"))
    rot = rotations(e, improper=True, dtype=dtype)
    ref_rot = rot.clone().requires_grad_(True)
    ref = wigner_D_blocks(lmax, ref_rot)
    grads = [torch.randn_like(b) for b in ref]
    (ref_grad,) = torch.autograd.grad(ref, ref_rot, grads)
    grad = torch.cat([g.reshape(-1) for g in grads])
    out = torch.ops.sciml.wigner_blocks(rot, kernels, lmax)
    out_grad = torch.ops.sciml.wigner_blocks_backward(rot, grad, kernels, lmax)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-13
    assert (out - torch.cat([b.reshape(-1) for b in ref])).abs().max() <= tolerance
    assert (out_grad - ref_grad).abs().max() <= tolerance * ref_grad.abs().max()


def test_edge_rotation_maps_edges_to_plus_y():
    v = torch.randn(200, 3, dtype=torch.float64) * 3
    v[0] = torch.tensor([0.0, 2.0, 0.0])
    v[1] = torch.tensor([0.0, -0.5, 0.0])
    v[2] = torch.tensor([1e-9, -1.0, -1e-9])
    v[3] = torch.tensor([1e-9, 1.0, 0.0])
    rot = edge_rotation(v)
    unit = v / v.norm(dim=1, keepdim=True)
    eye = torch.eye(3, dtype=torch.float64)
    assert (rot @ rot.transpose(1, 2) - eye).abs().max() < 1e-12
    assert (torch.linalg.det(rot) - 1).abs().max() < 1e-12
    assert (
        (rot @ unit.unsqueeze(-1)).squeeze(-1) - torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    ).abs().max() < 1e-12
    assert torch.equal(rot[0], eye)
    assert torch.equal(rot[1], torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)))
    assert torch.equal(edge_rotation(v), rot)  # deterministic
    assert torch.equal(edge_rotation(torch.zeros(1, 3)), torch.eye(3).unsqueeze(0))
    assert edge_rotation(torch.randn(2, 4, 3)).shape == (2, 4, 3, 3)


def test_edge_rotation_is_smooth_away_from_the_chart_seam():
    v = torch.randn(100, 3, dtype=torch.float64)
    v = v[(v[:, 1] / v.norm(dim=1) + 0.5).abs() > 0.05]
    step = 1e-6 * torch.randn_like(v)
    assert (edge_rotation(v + step) - edge_rotation(v)).abs().max() < 1e-3
    assert torch.autograd.gradcheck(edge_rotation, (v[:3].clone().requires_grad_(True),))
    # The harmonics of an edge in its own frame are those of +y: non-zero only at m = 0.
    sh = spherical_harmonics_upto(4, v)
    in_frame = (wigner_D(4, edge_rotation(v)) @ sh.unsqueeze(-1)).squeeze(-1)
    assert (in_frame - spherical_harmonics_upto(4, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))).abs().max() < 1e-12


@pytest.mark.parametrize(
    "lmax, shape, match",
    [
        (-1, (2, 3, 3), "lmax must be an int in 0..16"),
        (17, (2, 3, 3), "0..16"),
        (2.0, (2, 3, 3), "lmax"),
        (2, (2, 3), r"\(\.\.\., 3, 3\)"),
        (2, (2, 3, 4), r"\(\.\.\., 3, 3\)"),
    ],
)
def test_bad_input_raises(lmax, shape, match):
    with pytest.raises(ValueError, match=match):
        wigner_D(lmax, torch.zeros(shape))
    with pytest.raises(ValueError, match=match):
        wigner_D_blocks(lmax, torch.zeros(shape))


def test_edge_rotation_bad_input_raises():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        edge_rotation(torch.zeros(4, 2))

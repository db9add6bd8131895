"""``sciml.ops.patch_e3nn`` on MACE (mace-torch): a MACE model constructed under the patch takes the
e3nn model's state dict (strict, both ways) and gives the same energy, forces and parameter
gradients in float64; undo gives e3nn back its own classes. Skipped without mace-torch."""

import pytest
import torch

pytest.importorskip("mace.modules")  # mace-torch, with torch-ema and torchmetrics

import e3nn.o3  # noqa: E402

from sciml.bench.mace import (  # noqa: E402
    HIDDEN_IRREPS, atoms_to_batch, build_mace, energy_forces, training_step, water_box)
from sciml.ops import patch_e3nn  # noqa: E402

pytestmark = pytest.mark.slow  # every test builds and runs MACE models

# Tolerance of every comparison: |a - b| <= ATOL + RTOL * |b| elementwise (torch.testing.assert_close),
# energies in eV, forces in eV/Å, gradients in the loss's units per parameter unit.
RTOL = ATOL = 1e-6
PATCHED_NAMES = ("TensorProduct", "FullyConnectedTensorProduct", "FullTensorProduct", "ElementwiseTensorProduct",
                 "TensorSquare", "Linear", "spherical_harmonics", "SphericalHarmonics")


@pytest.fixture(scope="module")
def water():
    """8 randomly rotated waters in a periodic 6.2 Å box: 24 atoms, about 1300 edges at r_max 5 Å."""
    return water_box(8)


@pytest.fixture(scope="module", params=sorted(HIDDEN_IRREPS))
def models(request):
    """(plain, patched) float64 MACE of one hidden-irreps variant, the patched one constructed under
    the patch and loaded strictly with the plain one's weights."""
    config = dict(atomic_numbers=(1, 8), hidden_irreps=HIDDEN_IRREPS[request.param], dtype=torch.float64, seed=0)
    plain = build_mace(**config)
    with patch_e3nn():
        patched = build_mace(**config)
    patched.load_state_dict(plain.state_dict(), strict=True)
    return plain, patched


def test_patched_mace_is_made_of_sciml_modules(models):
    _, patched = models
    sciml_modules = {type(m).__name__ for m in patched.modules() if type(m).__module__.startswith("sciml")}
    assert sciml_modules, "no sciml module in the MACE model constructed under patch_e3nn"


def test_state_dicts_load_strictly_both_ways(models):
    plain, patched = models
    plain_state, patched_state = plain.state_dict(), patched.state_dict()
    assert list(plain_state) == list(patched_state)
    assert all(plain_state[k].shape == patched_state[k].shape for k in plain_state)
    plain.load_state_dict(patched_state, strict=True)
    patched.load_state_dict(plain_state, strict=True)


def test_energy_and_forces_match_e3nn(models, water):
    plain, patched = models
    batch = atoms_to_batch(water, plain)
    energy, forces = energy_forces(plain, batch)
    energy_patched, forces_patched = energy_forces(patched, batch)
    assert forces.abs().max() > 1e-3  # random weights still give non-trivial forces
    torch.testing.assert_close(energy_patched, energy, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(forces_patched, forces, rtol=RTOL, atol=ATOL)


def test_parameter_gradients_match_e3nn(models, water):
    """A training step's loss (energy^2 + forces^2, forces by autograd with the graph kept)
    backpropagates into the same parameter gradients."""
    plain, patched = models
    batch = atoms_to_batch(water, plain)
    torch.testing.assert_close(training_step(patched, batch), training_step(plain, batch), rtol=RTOL, atol=ATOL)
    patched_parameters = dict(patched.named_parameters())
    for name, parameter in plain.named_parameters():
        torch.testing.assert_close(patched_parameters[name].grad, parameter.grad, rtol=RTOL, atol=ATOL, msg=name)


def _e3nn_objects():
    return {name: getattr(e3nn.o3, name) for name in PATCHED_NAMES}


def _assert_originals(originals):
    replaced = [name for name, obj in originals.items() if getattr(e3nn.o3, name) is not obj]
    assert not replaced, f"still patched in e3nn.o3: {replaced}"


def test_undo_gives_e3nn_its_classes_back():
    originals = _e3nn_objects()
    handle = patch_e3nn()
    assert e3nn.o3.TensorProduct is not originals["TensorProduct"]
    handle.undo()
    _assert_originals(originals)
    with patch_e3nn():
        assert e3nn.o3.Linear is not originals["Linear"]
        assert e3nn.o3.SphericalHarmonics is not originals["SphericalHarmonics"]
    _assert_originals(originals)


def test_context_restores_e3nn_after_an_error():
    originals = _e3nn_objects()
    with pytest.raises(RuntimeError, match="inside"):
        with patch_e3nn():
            raise RuntimeError("inside")
    _assert_originals(originals)
    assert e3nn.o3.TensorProduct is originals["TensorProduct"]

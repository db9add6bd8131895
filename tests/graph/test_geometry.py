import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.lj import LennardJones

from sciml.graph import AtomicGraph, BesselBasis, CosineEnvelope, GaussianBasis, PolynomialEnvelope
from sciml.testing import check_conservative
from sciml.ops.irreps import default_dtype
from pair_potential import LennardJonesModel


def ase_reference(atoms, sigma, epsilon, cutoff):
    atoms = atoms.copy()
    atoms.calc = LennardJones(sigma=sigma, epsilon=epsilon, rc=cutoff, smooth=False)
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False) if atoms.pbc.any() else None


@pytest.mark.parametrize("kind", ["triclinic crystal", "slab", "molecule"])
def test_energy_forces_stress_equal_ase_lennard_jones(kind):
    if kind == "triclinic crystal":
        atoms = bulk("Ar", "fcc", a=5.3).repeat((2, 2, 2))
        atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.05, 0], [0, 1.02, 0.1], [0, 0, 0.97]]), scale_atoms=True)
    elif kind == "slab":
        atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat((2, 2, 2))
        atoms.pbc = [True, True, False]
    else:
        atoms = molecule("C6H6")
    atoms.rattle(0.1, seed=3)
    sigma, epsilon, cutoff = (3.4, 0.0104, 8.0) if kind != "molecule" else (1.2, 0.1, 4.0)
    energy, forces, stress = ase_reference(atoms, sigma, epsilon, cutoff)
    model = LennardJonesModel(sigma, epsilon, cutoff)
    out = model(AtomicGraph.from_ase(atoms, cutoff=cutoff, dtype=torch.float64))
    assert float(out["energy"]) == pytest.approx(energy, rel=1e-10, abs=1e-12)
    assert np.allclose(out["forces"].numpy(), forces, atol=1e-10)
    if stress is not None:
        assert np.allclose(out["stress"][0].numpy(), stress, atol=1e-12)


def test_forces_and_stress_equal_finite_differences():
    atoms = bulk("Ar", "fcc", a=5.2).repeat((2, 1, 1))
    atoms.rattle(0.2, seed=0)
    errors = check_conservative(LennardJonesModel(3.4, 0.0104, 7.0), atoms, step=1e-5, components=12)
    assert errors["forces"] < 1e-8 and errors["stress"] < 1e-9


def test_consistency_checker_catches_non_conservative_forces():
    class Scaled(LennardJonesModel):
        def forward(self, graph, compute_forces=True, compute_stress=True):
            out = super().forward(graph, compute_forces, compute_stress)
            return {name: value * (1.1 if name in ("forces", "stress") else 1.0) for name, value in out.items()}

    atoms = bulk("Ar", "fcc", a=5.2).repeat((2, 1, 1))
    atoms.rattle(0.2, seed=0)
    errors = check_conservative(Scaled(3.4, 0.0104, 7.0), atoms, step=1e-5)
    assert errors["forces"] > 1e-4 and errors["stress"] > 1e-6


def derivatives(module, r):
    r = r.clone().requires_grad_(True)
    y = module(r)
    (d1,) = torch.autograd.grad(y.sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    return y.detach(), d1.detach(), d2


@pytest.mark.parametrize("exponent", [3, 5, 6])
def test_polynomial_envelope_is_smooth_at_the_cutoff(exponent):
    envelope = PolynomialEnvelope(cutoff=5.0, exponent=exponent)
    value, d1, d2 = derivatives(envelope, torch.tensor([0.0, 2.5, 5.0 - 1e-7, 5.0, 6.0], dtype=torch.float64))
    assert value[0] == 1.0
    assert torch.allclose(value[2:], torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d1[2:], torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(d2[2:], torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.all(value[:2] > 0) and torch.all(torch.diff(value) <= 1e-12)


def test_cosine_envelope_value_and_slope_vanish():
    value, d1, _ = derivatives(CosineEnvelope(4.0), torch.tensor([0.0, 4.0 - 1e-9, 4.5], dtype=torch.float64))
    assert value.tolist()[0] == 1.0 and abs(value[1]) < 1e-12 and abs(d1[1]) < 1e-8 and value[2] == 0


def test_radial_bases_match_their_formulas():
    r = torch.linspace(0.5, 5.0, 7, dtype=torch.float64)
    with default_dtype(torch.float64):
        bessel = BesselBasis(cutoff=5.0, num_basis=4)(r)
        gaussian = GaussianBasis(0.0, 5.0, 11, width=0.5)(r)
    n = torch.arange(1, 5, dtype=torch.float64)
    assert torch.allclose(bessel, np.sqrt(2 / 5) * torch.sin(n * np.pi * r[:, None] / 5) / r[:, None])
    assert torch.allclose(bessel[-1], torch.zeros(4, dtype=torch.float64), atol=1e-12)  # zero at the cutoff
    centres = torch.linspace(0, 5, 11, dtype=torch.float64)
    assert torch.allclose(gaussian, torch.exp(-((r[:, None] - centres) ** 2) / (2 * 0.25**2)))

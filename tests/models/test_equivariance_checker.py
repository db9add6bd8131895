import pytest
import torch
from ase.build import bulk, fcc111, molecule

from sciml.graph import GraphSpec
from sciml.testing import ALL_CHECKS, assert_equivariant, check_equivariance
from pair_potential import LennardJonesModel


def test_graph_layer_model_passes_every_check_on_crystals_slabs_and_molecules():
    crystal = bulk("Ar", "fcc", a=5.3) * (2, 1, 1)
    crystal.rattle(0.1, seed=1)
    slab = fcc111("Ar", (2, 2, 2), a=5.3, vacuum=4.0)
    slab.rattle(0.1, seed=2)
    model = LennardJonesModel(3.4, 0.0104, 7.0)
    for atoms in (crystal, slab):
        report = assert_equivariant(model, atoms, tolerance=1e-9, checks=ALL_CHECKS)
        assert set(report.errors) == set(ALL_CHECKS)
    mol = molecule("CH3CH2OH")
    report = assert_equivariant(LennardJonesModel(1.2, 0.1, 4.0), mol, tolerance=1e-9, checks=ALL_CHECKS)
    assert "supercell" not in report.errors  # periodic checks are skipped for molecules


class Broken(LennardJonesModel):
    """Adds a term that breaks one symmetry, to show the checker catches it."""

    def __init__(self, flaw):
        super().__init__(3.4, 0.0104, 7.0)
        self.flaw = flaw

    def forward(self, graph, compute_stress=True):
        out = super().forward(graph, compute_stress)
        if self.flaw == "axis":  # depends on the absolute x axis: not rotation invariant
            out["energy"] = out["energy"] + 0.1 * graph.positions[:, 0].sum()
        if self.flaw == "first_atom":  # depends on atom order
            out["energy"] = out["energy"] + 0.1 * graph.atomic_numbers[0].double() * graph.positions[0].norm()
        if self.flaw == "intensive":  # per-atom mean: not extensive under a supercell
            out["energy"] = out["energy"] / graph.num_atoms_per_graph
        if self.flaw == "cell":  # depends on the cell vectors themselves
            out["energy"] = out["energy"] + 0.1 * graph.cell[:, 0, 0]
        return out


@pytest.mark.parametrize("flaw, check", [("axis", "rotation"), ("first_atom", "permutation"), ("intensive", "supercell"), ("cell", "lattice_basis")])
def test_checker_detects_broken_symmetry(flaw, check):
    crystal = bulk("Ar", "fcc", a=5.3) * (2, 1, 1)
    crystal.rattle(0.1, seed=1)
    report = check_equivariance(Broken(flaw), crystal, outputs={"energy": "energy"}, checks=ALL_CHECKS)
    assert report.max_error(check) > 1e-3, str(report)
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(Broken(flaw), crystal, outputs={"energy": "energy"}, checks=[check])


def test_position_outputs_follow_translations():
    class Identity(torch.nn.Module):
        graph_spec = GraphSpec(cutoff=3.0)

        def forward(self, graph):
            return {"positions": graph.positions * 1.0}

    report = check_equivariance(Identity(), molecule("H2O"), outputs={"positions": "atom_position"}, checks=ALL_CHECKS)
    assert report.max_error() < 1e-12

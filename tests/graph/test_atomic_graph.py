import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from pymatgen.core import Lattice, Molecule, Structure

from sciml.graph import AtomicGraph, batched_neighbor_list, edge_geometry, neighbor_list


def labelled(atoms, seed):
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(
        atoms, energy=float(rng.normal()), forces=rng.normal(size=(len(atoms), 3)), stress=rng.normal(size=6)
    )
    return atoms


def structures():
    return [labelled(bulk("Cu", cubic=True), 0), labelled(molecule("CH3CH2OH"), 1), labelled(fcc111("Pt", (2, 2, 3), vacuum=6.0), 2)]


def test_collate_split_round_trip():
    graphs = [AtomicGraph.from_ase(a, cutoff=4.0, dtype=torch.float64) for a in structures()]
    batch = AtomicGraph.collate(graphs)
    assert batch.num_graphs == 3 and batch.num_nodes == sum(g.num_nodes for g in graphs)
    assert batch.ptr.tolist() == [0, 4, 13, 25]
    assert torch.equal(batch.batch, torch.repeat_interleave(torch.arange(3), torch.tensor([4, 9, 12])))
    assert batch.num_edges == sum(g.num_edges for g in graphs)
    for original, back in zip(graphs, batch.split()):
        for name in ("positions", "atomic_numbers", "cell", "pbc", "batch", "ptr", "edge_index", "cell_shifts", "energy", "forces", "stress"):
            assert torch.equal(getattr(original, name), getattr(back, name)), name
    # The batched neighbour list equals the per-structure lists with offsets.
    edge_index, shifts = batched_neighbor_list(batch, 4.0)
    assert torch.equal(edge_index, batch.edge_index) and torch.equal(shifts, batch.cell_shifts)


def test_from_ase_reads_targets_and_builds_ase_edges():
    atoms = structures()[2]
    graph = AtomicGraph.from_ase(atoms, cutoff=3.5, dtype=torch.float64)
    assert float(graph.energy) == pytest.approx(atoms.get_potential_energy())
    assert np.allclose(graph.forces.numpy(), atoms.get_forces())
    voigt = atoms.get_stress()
    assert np.allclose(graph.stress[0].numpy(), [[voigt[0], voigt[5], voigt[4]], [voigt[5], voigt[1], voigt[3]], [voigt[4], voigt[3], voigt[2]]])
    geometry = edge_geometry(graph)
    i, j = graph.edge_index
    expected = atoms.positions[j] - atoms.positions[i] + graph.cell_shifts.numpy() @ atoms.cell.array
    assert np.allclose(geometry.vectors.numpy(), expected)
    assert geometry.lengths.max() < 3.5
    back = graph.to_ase()[0]
    assert np.allclose(back.positions, atoms.positions) and np.allclose(back.get_stress(), voigt)


def test_from_pymatgen_structure_and_molecule_match_ase():
    structure = Structure(Lattice.from_parameters(3.1, 3.9, 4.4, 80, 95, 110), ["Na", "Cl"], [[0, 0, 0], [0.4, 0.6, 0.45]])
    from_pmg = AtomicGraph.from_pymatgen(structure, cutoff=5.0, dtype=torch.float64)
    atoms = Atoms(["Na", "Cl"], positions=structure.cart_coords, cell=structure.lattice.matrix, pbc=True)
    from_ase = AtomicGraph.from_ase(atoms, cutoff=5.0, dtype=torch.float64)
    assert torch.equal(from_pmg.edge_index, from_ase.edge_index) and torch.equal(from_pmg.cell_shifts, from_ase.cell_shifts)
    assert from_pmg.atomic_numbers.tolist() == [11, 17]
    water = Molecule(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    graph = AtomicGraph.from_pymatgen(water, cutoff=1.2)
    assert not graph.pbc.any() and graph.num_edges == 4
    both = AtomicGraph.from_pymatgen([structure, water], cutoff=1.2)
    assert both.num_graphs == 2


def test_to_moves_and_casts():
    graph = AtomicGraph.from_ase(structures(), cutoff=3.0)
    moved = graph.to("cpu", dtype=torch.float64)
    assert moved.positions.dtype == torch.float64 and moved.edge_index.dtype == torch.int64
    assert moved.atomic_numbers.dtype == torch.int64 and moved.stress.dtype == torch.float64


def test_properties_collate():
    atoms = [molecule("H2O"), molecule("NH3")]
    for k, a in enumerate(atoms):
        a.info["gap"] = 1.0 + k
        a.arrays["charge"] = np.arange(len(a), dtype=float)
    graph = AtomicGraph.from_ase(atoms, cutoff=2.0, property_keys=["gap", "charge"])
    assert graph.properties["gap"].tolist() == [1.0, 2.0]
    assert graph.atom_properties["charge"].shape == (7,)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: AtomicGraph.from_symbols(["H", "Xx"], np.zeros((2, 3))), "unknown element symbol 'Xx'"),
        (lambda: AtomicGraph.from_tensors(np.zeros((2, 3)), [1, 200]), "atomic number 200"),
        (lambda: AtomicGraph.from_tensors(np.array([[0, 0, np.nan], [1, 1, 1.0]]), [1, 1]), "positions contains NaN"),
        (lambda: AtomicGraph.from_tensors(np.zeros((2, 3)), [1]), "atomic_numbers has 1 entries"),
        (lambda: AtomicGraph.from_tensors(np.zeros((0, 3)), []), "no atoms"),
        (lambda: AtomicGraph.from_tensors(np.zeros((2, 3)), [1, 1], forces=np.zeros((3, 3))), "forces must have shape"),
        (lambda: AtomicGraph.from_tensors(np.zeros((2, 3)), [1, 1], cell=np.zeros((3, 3)), pbc=True, cutoff=2.0), "singular"),
        (lambda: AtomicGraph.collate([]), "empty"),
    ],
)
def test_bad_structures_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_isolated_atoms_have_no_edges():
    graph = AtomicGraph.from_tensors([[0.0, 0, 0], [10.0, 0, 0]], [1, 1], cutoff=3.0)
    assert graph.num_edges == 0
    with pytest.raises(ValueError, match=r"atoms 0, 1 have no neighbour within the cutoff of 3.0 Å"):
        graph.require_neighbors()
    AtomicGraph.from_tensors([[0.0, 0, 0]], [1], cutoff=3.0).require_neighbors()  # a lone atom is fine
    AtomicGraph.from_tensors([[0.0, 0, 0], [1.0, 0, 0]], [1, 1], cutoff=3.0).require_neighbors()
    i, j, s = neighbor_list(graph.positions, None, False, 3.0)
    assert i.numel() == 0

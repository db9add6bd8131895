"""The lattice-based crystal graph: k-NN with ties against brute force, lattice frames, and
independence from the unit cell (supercell, other basis, shifted origin, unwrapped atoms)."""

from collections import Counter
import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, make_supercell

from sciml.graph import AtomicGraph, GraphSpec, crystal_translations, knn_neighbor_list, lattice_frame

SPEC = GraphSpec(knn=12, lattice_frame=True)


def _triclinic(seed=0):
    rng = np.random.default_rng(seed)
    cell = np.diag([3.1, 3.7, 4.3]) + rng.uniform(-0.6, 0.6, (3, 3))
    frac = rng.uniform(0, 1, (3, 3))
    return Atoms(["Cu", "Au", "Au"], scaled_positions=frac, cell=cell, pbc=True)


def _brute_force_knn(atoms, k, tolerance, reach=4):
    pos, cell, n = atoms.positions, atoms.cell.array, len(atoms)
    shifts = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)))
    edges = set()
    for i in range(n):
        found = []
        for j in range(n):
            d = pos[j] - pos[i] + shifts @ cell
            for s, length in zip(shifts, np.linalg.norm(d, axis=1)):
                if length > 1e-9:
                    found.append((length, j, tuple(s)))
        found.sort()
        kth = found[k - 1][0]
        for length, j, s in found:
            if length <= kth + tolerance:
                edges.add((i, j, s))
                edges.add((j, i, tuple(-np.array(s))))
    return edges


@pytest.mark.parametrize("atoms", [_triclinic(0), _triclinic(1), bulk("NaCl", "rocksalt", a=5.6), bulk("Cu", "fcc", a=3.6)],
                         ids=["triclinic0", "triclinic1", "NaCl", "Cu"])
@pytest.mark.parametrize("k", [1, 12, 25])
def test_knn_with_ties_equals_brute_force(atoms, k):
    i, j, s = knn_neighbor_list(atoms.positions, atoms.cell.array, True, k, start_radius=1.0, tie_tolerance=1e-3)
    got = {(int(a), int(b), tuple(int(x) for x in c)) for a, b, c in zip(i, j, s)}
    assert len(got) == len(i)  # no duplicate edges
    assert got == _brute_force_knn(atoms, k, 1e-3)
    assert torch.all(i[1:] >= i[:-1])


def test_knn_keeps_ties():
    """fcc has 12 nearest neighbours: k = 5 keeps all 12 of them, k = 13 all 12 + 6 second ones."""
    atoms = bulk("Cu", "fcc", a=3.6)
    for k, expected in ((5, 12), (13, 18)):
        i, _, _ = knn_neighbor_list(atoms.positions, atoms.cell.array, True, k)
        assert len(i) == expected


def test_knn_of_small_molecule_keeps_everything():
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    i, j, _ = knn_neighbor_list(atoms.positions, None, False, 25)
    assert len(i) == 6


def _environment_counts(graph: AtomicGraph) -> Counter:
    i, j = graph.edge_index
    d = graph.positions[j] - graph.positions[i] + graph.cell_shifts.to(graph.positions.dtype) @ graph.cell[0]
    z = graph.atomic_numbers
    return Counter((int(a), int(b), *np.round(v.numpy() + 1e-7, 5)) for a, b, v in zip(z[i], z[j], d))


def _variants(atoms):
    """The same crystal in other unit cells."""
    rng = np.random.default_rng(3)
    supercell = make_supercell(atoms, [[2, 0, 0], [0, 1, 1], [0, -1, 1]])
    other_basis = atoms.copy()
    other_basis.set_cell(np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]]) @ atoms.cell.array, scale_atoms=False)
    shifted = atoms.copy()
    shifted.positions += rng.uniform(-2, 2, 3)
    unwrapped = atoms.copy()
    unwrapped.positions += rng.integers(-2, 3, (len(atoms), 3)) @ atoms.cell.array
    return {"supercell": (supercell, 4), "other_basis": (other_basis, 1), "shifted": (shifted, 1),
            "unwrapped": (unwrapped, 1)}


@pytest.mark.parametrize("atoms", [_triclinic(0), _triclinic(2)], ids=["triclinic0", "triclinic2"])
def test_crystal_graph_is_independent_of_the_unit_cell(atoms):
    reference = AtomicGraph.from_ase(atoms, SPEC, dtype=torch.float64)
    frame = reference.lattice_frame[0] @ reference.cell[0]
    counts = _environment_counts(reference)
    for name, (variant, multiplicity) in _variants(atoms).items():
        graph = AtomicGraph.from_ase(variant, SPEC, dtype=torch.float64)
        assert _environment_counts(graph) == Counter({key: multiplicity * c for key, c in counts.items()}), name
        torch.testing.assert_close(graph.lattice_frame[0] @ graph.cell[0], frame, atol=1e-9, rtol=0, msg=name)


def test_frame_rules_and_rotation():
    atoms = _triclinic(0)
    frame = lattice_frame(atoms.positions, atoms.numbers, atoms.cell.array)
    lengths = np.linalg.norm(frame, axis=1)
    assert lengths[0] <= lengths[1] + 1e-9 and lengths[1] <= lengths[2] + 1e-9
    assert frame[0] @ frame[1] >= 0 and frame[0] @ frame[2] >= 0
    assert np.linalg.det(frame) > 0
    # the frame vectors are lattice vectors: integer coordinates in the cell
    coefficients = frame @ np.linalg.inv(atoms.cell.array)
    np.testing.assert_allclose(coefficients, np.round(coefficients), atol=1e-9)
    # no lattice vector is shorter than the first
    shifts = np.array([s for s in itertools.product(range(-3, 4), repeat=3) if any(s)])
    assert np.linalg.norm(shifts @ atoms.cell.array, axis=1).min() >= lengths[0] - 1e-9
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    rotation = rotation * torch.linalg.det(rotation)  # proper
    r = rotation.numpy()
    rotated = lattice_frame(atoms.positions @ r.T, atoms.numbers, atoms.cell.array @ r.T)
    np.testing.assert_allclose(rotated, frame @ r.T, atol=1e-9)
    # a mirror image gets a right-handed frame too: not the mirrored (left-handed) frame
    mirror = np.diag([-1.0, 1.0, 1.0])
    mirrored = lattice_frame(atoms.positions @ mirror, atoms.numbers, atoms.cell.array @ mirror)
    assert np.linalg.det(mirrored) > 0
    assert not np.allclose(mirrored, frame @ mirror, atol=1e-6)


def test_translations_of_a_supercell():
    atoms = bulk("NaCl", "rocksalt", a=5.6)
    big = make_supercell(atoms, 2 * np.eye(3))
    translations = crystal_translations(big.positions, big.numbers, big.cell.array)
    assert len(translations) == 8
    conventional = bulk("NaCl", "rocksalt", a=5.6, cubic=True)
    assert len(crystal_translations(conventional.positions, conventional.numbers, conventional.cell.array)) == 4


def test_frame_of_symmetric_lattices_depends_on_the_lattice_only():
    """fcc: primitive and conventional cells, rotated, give frames of the same shape (Gram matrix)."""
    primitive = bulk("NaCl", "rocksalt", a=5.6)
    conventional = bulk("NaCl", "rocksalt", a=5.6, cubic=True)
    grams = []
    for atoms in (primitive, conventional, make_supercell(primitive, [[1, 1, 0], [0, 1, 1], [1, 0, 2]])):
        frame = lattice_frame(atoms.positions, atoms.numbers, atoms.cell.array)
        grams.append(frame @ frame.T)
    for gram in grams[1:]:
        np.testing.assert_allclose(gram, grams[0], atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(lattice_frame(primitive.positions, primitive.numbers,
                                                            primitive.cell.array), axis=1), [5.6 / 2**0.5] * 3)


def test_batches_and_errors():
    a, b = _triclinic(0), bulk("NaCl", "rocksalt", a=5.6)
    batch = AtomicGraph.from_ase([a, b], SPEC)
    singles = [AtomicGraph.from_ase(x, SPEC) for x in (a, b)]
    assert batch.knn == 12 and batch.lattice_frame.shape == (2, 3, 3)
    torch.testing.assert_close(batch.lattice_frame, torch.cat([g.lattice_frame for g in singles]))
    assert [g.num_edges for g in batch.split()] == [g.num_edges for g in singles]
    slab = b.copy()
    slab.pbc = (True, True, False)
    with pytest.raises(ValueError, match="not periodic in all three"):
        AtomicGraph.from_ase(slab, SPEC)
    with pytest.raises(ValueError, match="lattice_frame needs a k-NN graph"):
        GraphSpec(cutoff=5.0, lattice_frame=True)

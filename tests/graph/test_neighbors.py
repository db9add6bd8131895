import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.neighborlist import primitive_neighbor_list

from sciml.graph import neighbor_list


def as_set(i, j, s):
    i, j, s = (np.asarray(x) for x in (i, j, s))
    return set(zip(i.tolist(), j.tolist(), map(tuple, s.tolist())))


def ase_set(pos, cell, pbc, cutoff):
    return as_set(*primitive_neighbor_list("ijS", pbc, cell, pos, cutoff, self_interaction=False))


def sciml_set(pos, cell, pbc, cutoff, **kw):
    i, j, s = neighbor_list(pos, cell, pbc, cutoff, **kw)
    found = as_set(i, j, s)
    assert len(found) == len(i), "duplicate pairs"
    return found


def brute_force(pos, cell, pbc, cutoff, reach=None):
    """All (i, j, S) with |D| < cutoff by explicit enumeration of images (``reach`` per axis)."""
    pos, cell = np.asarray(pos, float), np.asarray(cell, float)
    if reach is not None:
        return _enumerate(pos, cell, cutoff, reach)
    frac = pos @ np.linalg.pinv(cell) if np.any(pbc) else np.zeros_like(pos)
    spread = np.ceil(frac.max(0) - frac.min(0)) if len(pos) else np.zeros(3)
    reach = []
    for k in range(3):
        if not pbc[k]:
            reach.append(0)
            continue
        others = [cell[m] for m in range(3) if m != k]
        normal = np.cross(*others)
        face = abs(cell[k] @ normal) / np.linalg.norm(normal)
        reach.append(int(np.ceil(cutoff / face) + spread[k] + 1))
    return _enumerate(pos, cell, cutoff, reach)


def _enumerate(pos, cell, cutoff, reach):
    shifts = np.array(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")).reshape(3, -1).T
    d = pos[None, :, None, :] - pos[:, None, None, :] + (shifts @ cell)[None, None]
    close = np.linalg.norm(d, axis=-1) < cutoff
    i, j, s = np.nonzero(close)
    keep = ~((i == j) & np.all(shifts[s] == 0, axis=1))
    return as_set(i[keep], j[keep], shifts[s][keep])


def random_case(rng, t):
    n = int(rng.integers(1, 25))
    cell = rng.normal(size=(3, 3)) * rng.uniform(1.5, 6)
    if t % 5 == 0:
        cell = np.diag(rng.uniform(1, 8, 3))
    if t % 7 == 0:  # very skewed, same lattice
        cell[2] = cell[0] * 3 + cell[1] * 2 + cell[2]
    pbc = rng.random(3) < 0.6
    cutoff = rng.uniform(0.5, 7)
    pos = rng.uniform(-0.5, 1.5, (n, 3)) @ cell  # atoms outside the unit cell too
    return pos, cell, pbc, cutoff


def affordable(cell, pbc, cutoff):
    """ase enumerates every image box: skip cases where that takes too long or too much memory."""
    volume = abs(np.linalg.det(cell))
    if volume < 1.0:
        return False
    faces = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    return np.prod(np.where(pbc, 2 * np.ceil(cutoff / faces) + 1, 1)) <= 3000


@pytest.mark.slow
def test_matches_ase_on_random_structures():
    rng = np.random.default_rng(1234)
    checked = 0
    for t in range(400):
        pos, cell, pbc, cutoff = random_case(rng, t)
        if not affordable(cell, pbc, cutoff):
            continue
        assert sciml_set(pos, cell, pbc, cutoff) == ase_set(pos, cell, pbc, cutoff), (t, pbc, cutoff)
        checked += 1
    assert checked >= 300


@pytest.mark.parametrize(
    "name, cell, pbc, cutoff",
    [
        pytest.param("cutoff much larger than the cell", np.diag([1.1, 1.3, 0.9]), [True] * 3, 4.0, marks=pytest.mark.slow),
        ("very skewed triclinic", np.array([[1, 0, 0], [2, 1, 0], [3, 2, 1]]) @ np.array([[4.0, 0, 0], [0.5, 4.2, 0], [0.3, 0.7, 4.5]]), [True] * 3, 3.0),
        ("slab: mixed pbc", np.array([[4.0, 0, 0], [1.0, 3.5, 0], [0, 0, 20]]), [True, True, False], 5.0),
        ("wire: one periodic axis", np.diag([2.5, 10, 10]), [True, False, False], 6.0),
        ("no pbc", np.diag([5.0, 5, 5]), [False] * 3, 3.0),
    ],
)
def test_pathological_cells_match_ase(name, cell, pbc, cutoff):
    rng = np.random.default_rng(7)
    pos = rng.uniform(-1.0, 2.0, (17, 3)) @ cell
    expected = ase_set(pos, cell, pbc, cutoff)
    assert sciml_set(pos, cell, pbc, cutoff) == expected
    assert expected == brute_force(pos, cell, pbc, cutoff)


def test_single_atom_sees_only_its_images():
    cell = np.diag([2.0, 3.0, 10.0])
    found = sciml_set(np.zeros((1, 3)), cell, [True, True, False], 3.5)
    assert found == ase_set(np.zeros((1, 3)), cell, [True, True, False], 3.5)
    assert all(i == j == 0 for i, j, _ in found) and (0, 0, (1, 0, 0)) in found
    assert sciml_set(np.zeros((1, 3)), None, False, 3.0) == set()


def test_zero_cell_vectors_along_open_directions():
    rng = np.random.default_rng(3)
    cell = np.array([[0.0, 0, 0], [0.5, 3.1, 0], [0.2, 0.3, 2.7]])
    pos = rng.uniform(0, 3, (15, 3))
    assert sciml_set(pos, cell, [False, True, True], 2.4) == brute_force(pos, cell, [False, True, True], 2.4, reach=(0, 6, 6))
    water = molecule("H2O")
    assert sciml_set(water.positions, np.zeros((3, 3)), False, 1.2) == ase_set(water.positions, np.zeros((3, 3)), [False] * 3, 1.2)


def test_convention_and_outputs():
    atoms = bulk("Si", "diamond", a=5.43)
    pos = torch.tensor(atoms.positions, dtype=torch.float32)
    i, j, s = neighbor_list(pos, atoms.cell.array, atoms.pbc, 2.5)
    assert i.dtype == j.dtype == s.dtype == torch.int64 and s.shape == (len(i), 3)
    assert torch.all(i[1:] >= i[:-1])  # sorted by centre
    d = atoms.positions[j] - atoms.positions[i] + s.numpy() @ atoms.cell.array
    assert np.allclose(np.linalg.norm(d, axis=1), 5.43 * np.sqrt(3) / 4)
    assert torch.bincount(i).tolist() == [4, 4]


def test_max_neighbors_keeps_nearest_deterministically():
    rng = np.random.default_rng(5)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.02, seed=1)
    pos, cell = atoms.positions, atoms.cell.array
    i, j, s = neighbor_list(pos, cell, True, 5.0)
    ci, cj, cs = neighbor_list(pos, cell, True, 5.0, max_neighbors=12)
    assert torch.all(torch.bincount(ci) == 12)
    dist = lambda a, b, c: np.linalg.norm(pos[b] - pos[a] + c.numpy() @ cell, axis=1)  # noqa: E731
    full, capped = dist(i, j, s), dist(ci, cj, cs)
    for centre in range(len(atoms)):
        kept = np.sort(capped[ci.numpy() == centre])
        assert np.allclose(kept, np.sort(full[i.numpy() == centre])[:12])
    # exact ties (perfect lattice): the result does not depend on anything but the input
    perfect = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    first = neighbor_list(perfect.positions, perfect.cell.array, True, 3.0, max_neighbors=5, max_neighbors_rule="strict")
    again = neighbor_list(perfect.positions, perfect.cell.array, True, 3.0, max_neighbors=5, max_neighbors_rule="strict")
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert torch.all(torch.bincount(first[0]) == 5)
    del rng


def _capped_distances(pos, cell, k, rule):
    """Each centre's sorted kept distances (rounded to 1e-9 Å) and the number of edges."""
    i, j, s = neighbor_list(pos, cell, True, 8.0, max_neighbors=k, max_neighbors_rule=rule)
    d = np.linalg.norm(pos[j] - pos[i] + s.numpy() @ cell, axis=1)
    return [tuple(np.round(np.sort(d[i.numpy() == c]), 9)) for c in range(len(pos))], len(i)


@pytest.mark.parametrize("k", [5, 12, 16, 20])
def test_ties_rule_keeps_whole_shells_so_rotations_do_not_change_the_graph(k):
    """Cu fcc (one atom, shells of 12, 6, 24 tied images): the "ties" rule keeps every neighbour
    tied with the k-th, the same set in any orientation; the strict rule keeps exactly k, picked by
    rounding, so a rotation changes which images are kept (same distances, other directions)."""
    from sciml.testing.equivariance import random_rotation

    atoms = bulk("Cu", "fcc", a=3.6)
    pos, cell = atoms.positions, atoms.cell.array
    shells = {5: 12, 12: 12, 16: 18, 20: 42}
    rng = np.random.default_rng(0)
    reference = {rule: neighbor_list(pos, cell, True, 8.0, max_neighbors=k, max_neighbors_rule=rule)
                 for rule in ("ties", "strict")}
    assert len(reference["ties"][0]) == shells[k] and len(reference["strict"][0]) == k
    strict_changed = 0
    for _ in range(10):
        rotation = random_rotation(rng)
        for rule in ("ties", "strict"):
            got = neighbor_list(pos @ rotation.T, cell @ rotation.T, True, 8.0, max_neighbors=k, max_neighbors_rule=rule)
            same = as_set(*got) == as_set(*reference[rule])
            if rule == "ties":
                assert same
            else:
                strict_changed += not same
    if shells[k] != k:  # the cap cuts a shell
        assert strict_changed > 0


def test_ties_rule_is_independent_of_atom_order_and_supercell():
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=1)
    per_atom, _ = _capped_distances(atoms.positions, atoms.cell.array, 12, "ties")
    swapped, _ = _capped_distances(atoms.positions[::-1], atoms.cell.array, 12, "ties")
    assert swapped == per_atom[::-1]
    big = atoms.repeat((2, 1, 1))
    tiled, _ = _capped_distances(big.positions, big.cell.array, 12, "ties")
    assert tiled == per_atom * 2
    assert len(per_atom[0]) == 16  # 4 bonds and all 12 translations tied at 3.84 Å (12 would cut them)


def test_fairchem_rule_keeps_up_to_the_next_squared_distance_plus_its_tolerance():
    """fairchem's ``enforce_max_neighbors_strictly=False``: d^2 <= d^2 of the (k+1)-th + 0.01 Å^2."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=2)
    pos, cell = atoms.positions, atoms.cell.array
    i, j, s = neighbor_list(pos, cell, True, 6.0)
    d2 = ((pos[j] - pos[i] + s.numpy() @ cell) ** 2).sum(1)
    fi, fj, fs = neighbor_list(pos, cell, True, 6.0, max_neighbors=10, max_neighbors_rule="fairchem")
    for centre in range(len(atoms)):
        sorted_d2 = np.sort(d2[i.numpy() == centre])
        expected = int((sorted_d2 <= sorted_d2[10] + 0.01).sum())
        assert int((fi == centre).sum()) == expected >= 11
    with pytest.raises(ValueError, match="max_neighbors_rule"):
        neighbor_list(pos, cell, True, 6.0, max_neighbors=10, max_neighbors_rule="loose")


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.array([[0.0, 0, np.nan]]), np.eye(3), True, 2.0), "NaN"),
        ((np.array([[0.0, 0, np.inf]]), np.eye(3), True, 2.0), "NaN or inf"),
        ((np.zeros((2, 3)), np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1]]), True, 2.0), "singular"),
        ((np.zeros((2, 3)), np.eye(3), True, 0.0), "cutoff"),
        ((np.zeros((2, 3)), np.eye(3), True, -1.0), "cutoff"),
        ((np.zeros((2, 2)), np.eye(3), True, 1.0), "shape"),
        ((np.zeros((2, 3)), np.eye(2), True, 1.0), "cell must have shape"),
        ((np.zeros((2, 3)), np.eye(3), [True, False], 1.0), "pbc"),
    ],
)
def test_bad_input_names_the_problem(args, message):
    with pytest.raises(ValueError, match=message):
        neighbor_list(*args)

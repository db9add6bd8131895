"""The lattice-based crystal graph of ComFormer (Yan et al., ICLR 2024), built on the shared
periodic neighbour search.

Two pieces, both functions of the infinite crystal only (not of the unit cell it is given in):

* :func:`knn_neighbor_list`: each atom's k nearest neighbours *with ties*: every periodic image
  at or within the distance of the k-th nearest one (plus ``tie_tolerance``) is kept. The search
  radius starts at ``start_radius`` and grows until every atom has all of them. With
  ``symmetric`` the reverse of every edge is added, so the graph is undirected, as ComFormer's.
* :func:`lattice_frame`: three lattice vectors of the crystal: the shortest lattice vector, the
  shortest one not collinear with it, the shortest one not coplanar with both, signed so that the
  second and third make acute (or right) angles with the first and the frame is right-handed.
  The lattice is the crystal's own translation lattice (pure translations that map the crystal
  onto itself), so a supercell gives the frame of its primitive cell. Ties in length are broken
  first by the most acute angles (so the frame's shape depends on the lattice only), then by a
  fixed function of the atoms seen in the frame (so symmetry-inequivalent choices are decided by
  the crystal itself, not by the order in which vectors were found).

A right-handed frame turns into a frame of the opposite handedness under a mirror, so a model that
reads angles to the frame (iComFormer) tells a chiral crystal from its mirror image.
"""

from __future__ import annotations

import itertools
from typing import Tuple

import numpy as np
import torch

from sciml.graph.neighbors import lll_reduce, neighbor_list
from sciml.graph.validation import as_tensor

_MAX_RADIUS_GROWTHS = 12


def knn_neighbor_list(
    positions: "torch.Tensor | np.ndarray",
    cell: "torch.Tensor | np.ndarray | None",
    pbc: "torch.Tensor | np.ndarray | bool | tuple",
    k: int,
    start_radius: float = 4.0,
    tie_tolerance: float = 1e-5,
    symmetric: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-nearest-neighbour pairs with ties, in :func:`neighbor_list`'s ``(i, j, S)`` convention.

    Args:
        positions: (N, 3) Å. cell: (3, 3) Å, rows are lattice vectors. pbc: periodic flags.
        k: neighbours per atom (ComFormer uses 25). Atoms of a finite structure with fewer than
            ``k`` other atoms keep all of them.
        start_radius: first search radius, Å; grown by 1.5x until every atom's k-th neighbour
            (plus the tolerance) lies inside it.
        tie_tolerance: Å; neighbours up to the k-th distance plus this are kept, so that
            distances equal in exact arithmetic are decided alike in every unit cell.
        symmetric: add the reverse ``(j, i, -S)`` of every pair (duplicates removed).

    Returns:
        ``(i, j, S)``: centre (E,), neighbour (E,) and integer image shifts (E, 3), int64, sorted
        by centre; the edge vector is ``positions[j] - positions[i] + S @ cell``.
    """
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    pos = as_tensor(positions, "positions").detach().to("cpu", torch.float64)
    n = pos.shape[0]
    cell_t = torch.zeros(3, 3, dtype=torch.float64) if cell is None else as_tensor(cell, "cell").detach().to("cpu", torch.float64)
    periodic = bool(torch.as_tensor(np.asarray(pbc, dtype=bool)).any())
    extent = float((pos.max(0).values - pos.min(0).values).norm()) if n else 0.0
    radius = float(start_radius)
    volume = float(torch.det(cell_t).abs()) if periodic else 0.0
    if periodic and bool(torch.as_tensor(np.asarray(pbc, dtype=bool)).all()) and volume > 0 and n:
        # the radius of a sphere holding k atoms at the crystal's density, with a margin: usually
        # one search suffices
        radius = max(radius, 1.15 * (3 * (k + 1) * volume / (4 * np.pi * n)) ** (1 / 3))
    for _ in range(_MAX_RADIUS_GROWTHS):
        i, j, shifts = neighbor_list(pos, cell_t, pbc, radius)
        lengths = (pos[j] - pos[i] + shifts.to(torch.float64) @ cell_t).norm(dim=1)
        counts = torch.bincount(i, minlength=n)
        everything_found = not periodic and radius > extent  # a finite structure has no more
        if everything_found or (n and int(counts.min()) >= k):
            kth = _kth_distance(i, lengths, counts, k, n)
            if everything_found or bool((kth + tie_tolerance < radius).all()):
                break
        radius *= 1.5
    else:
        raise ValueError(f"could not find {k} neighbours for every atom within {radius:.1f} Å")
    keep = lengths <= kth[i] + tie_tolerance
    i, j, shifts = i[keep], j[keep], shifts[keep]
    if symmetric:
        rows = torch.cat([torch.cat([i[:, None], j[:, None], shifts], 1), torch.cat([j[:, None], i[:, None], -shifts], 1)])
        rows = torch.unique(rows, dim=0)  # sorted by centre, then neighbour, then shift
        i, j, shifts = rows[:, 0], rows[:, 1], rows[:, 2:]
    device = as_tensor(positions, "positions").device
    return i.to(device), j.to(device), shifts.to(device)


def _kth_distance(i: torch.Tensor, lengths: torch.Tensor, counts: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """(n,) distance of each centre's k-th nearest neighbour (its farthest when it has fewer)."""
    order = torch.argsort(lengths, stable=True)
    order = order[torch.argsort(i[order], stable=True)]  # by centre, then by distance
    first = torch.cumsum(counts, 0) - counts
    rank = (torch.minimum(counts, torch.tensor(k)) - 1).clamp(min=0)
    kth = torch.full((n,), float("inf"), dtype=torch.float64)
    has = counts > 0
    kth[has] = lengths[order][first[has] + rank[has]]
    return kth


def crystal_translations(
    positions: "torch.Tensor | np.ndarray", numbers: "torch.Tensor | np.ndarray", cell: "torch.Tensor | np.ndarray",
    tolerance: float = 1e-3,
) -> np.ndarray:
    """Pure translations that map a crystal onto itself, as fractional coordinates of ``cell``.

    Returns (T, 3) float64 in [0, 1), the zero translation first; T > 1 means ``cell`` is a
    supercell of the crystal's primitive cell. Atoms match when they have the same element and lie
    within ``tolerance`` Å of each other after the translation.
    """
    cell = np.asarray(as_tensor(cell, "cell").detach().cpu(), dtype=np.float64)
    pos = np.asarray(as_tensor(positions, "positions").detach().cpu(), dtype=np.float64)
    numbers = np.asarray(as_tensor(numbers, "atomic_numbers").cpu())
    frac = pos @ np.linalg.inv(cell)
    frac -= np.floor(frac)
    elements, counts = np.unique(numbers, return_counts=True)
    anchor = int(np.flatnonzero(numbers == elements[np.argmin(counts)])[0])
    candidates = frac[numbers == numbers[anchor]] - frac[anchor]
    candidates -= np.floor(candidates)
    same = numbers[:, None] == numbers[None, :]
    found = []
    chunk = max(1, 4_000_000 // max(1, len(numbers) ** 2))
    for lo in range(0, len(candidates), chunk):
        t = candidates[lo:lo + chunk]
        diff = frac[None, :, None, :] + t[:, None, None, :] - frac[None, None, :, :]  # (C, N, N, 3)
        diff -= np.round(diff)
        dist = np.linalg.norm(diff @ cell, axis=-1)
        dist = np.where(same[None], dist, np.inf)
        maps = (dist.min(axis=2) < tolerance).all(axis=1)
        found.extend(t[maps])
    translations = np.array(found).reshape(-1, 3)
    translations[np.isclose(translations, 1.0, atol=1e-9)] = 0.0
    zero = np.all(np.abs(translations) < 1e-9, axis=1)
    return np.concatenate([np.zeros((1, 3)), translations[~zero]])


def lattice_frame(
    positions: "torch.Tensor | np.ndarray",
    numbers: "torch.Tensor | np.ndarray",
    cell: "torch.Tensor | np.ndarray",
    edge_index: "torch.Tensor | None" = None,
    shifts: "torch.Tensor | None" = None,
    tolerance: float = 1e-3,
) -> np.ndarray:
    """The crystal's three frame vectors (3, 3) in Å, as rows (see the module docstring).

    ``edge_index`` (2, E) and ``shifts`` (E, 3) (e.g. from :func:`knn_neighbor_list`) are the
    atoms the final tie-break looks at; without them, pairs within 5 Å are used. ``tolerance``
    (Å) decides which atoms coincide under a translation and which lengths and angles tie.
    """
    cell_np = np.asarray(as_tensor(cell, "cell").detach().cpu(), dtype=np.float64)
    pos = np.asarray(as_tensor(positions, "positions").detach().cpu(), dtype=np.float64)
    numbers_np = np.asarray(as_tensor(numbers, "atomic_numbers").cpu())
    if abs(np.linalg.det(cell_np)) < 1e-9:
        raise ValueError("a lattice frame needs a cell with three independent lattice vectors")
    vectors = _short_lattice_vectors(pos, numbers_np, cell_np, tolerance)
    triples = _candidate_frames(vectors, tolerance)
    if len(triples) > 1:
        if edge_index is None:
            i, j, s = neighbor_list(pos, cell_np, True, 5.0)
        else:
            (i, j), s = edge_index.cpu(), shifts.cpu()
        i, j, s = (np.asarray(t) for t in (i, j, s))
        d = pos[j] - pos[i] + s @ cell_np
        weight = numbers_np[i] + 0.618 * numbers_np[j]
        reference = np.array([0.31, 0.17, 0.11])
        scores = []
        for frame in triples:
            u = d @ np.linalg.inv(frame)
            scores.append(float((weight * np.exp(-((u - reference) ** 2).sum(1) / 0.25)).sum()))
        scores = np.array(scores)
        best = scores.min()
        triples = triples[scores <= best + 1e-9 * max(1.0, abs(best))]
    return triples[0]


def _short_lattice_vectors(pos: np.ndarray, numbers: np.ndarray, cell: np.ndarray, tolerance: float) -> np.ndarray:
    """Non-zero vectors of the crystal's translation lattice, at least up to the frame's lengths,
    sorted by length: (M, 3) Å."""
    reduced = lll_reduce(torch.as_tensor(cell)).numpy().astype(np.float64) @ cell
    translations = crystal_translations(pos, numbers, cell, tolerance) @ cell @ np.linalg.inv(reduced)
    translations -= np.floor(translations + 1e-9)
    steps = np.array(list(itertools.product(range(-3, 4), repeat=3)), dtype=np.float64)
    vectors = ((translations[:, None, :] + steps[None]).reshape(-1, 3)) @ reduced
    vectors = np.concatenate([vectors, -vectors])  # every vector with its reverse, also at the range's edge
    vectors = vectors[np.unique(np.round(vectors / max(tolerance, 1e-9)), axis=0, return_index=True)[1]]
    lengths = np.linalg.norm(vectors, axis=1)
    keep = (lengths > 1e-6) & (lengths <= np.linalg.norm(reduced, axis=1).max() + tolerance)
    vectors, lengths = vectors[keep], lengths[keep]
    return vectors[np.argsort(lengths, kind="stable")]


def _candidate_frames(vectors: np.ndarray, tolerance: float) -> np.ndarray:
    """All right-handed frames (F, 3, 3) obeying the length and sign rules, reduced to those with
    the most acute angles (lexicographically: v1.v2, then v1.v3, then v2.v3)."""
    lengths = np.linalg.norm(vectors, axis=1)
    scale = lengths.max()
    first = vectors[lengths <= lengths[0] + tolerance]
    frames = []
    for v1 in first:
        # off the line (plane) means farther than the tolerance from it, as for translations
        off_line = vectors[np.linalg.norm(np.cross(v1 / np.linalg.norm(v1), vectors), axis=1) > tolerance]
        l2 = np.linalg.norm(off_line, axis=1)
        for v2 in off_line[l2 <= l2.min() + tolerance]:
            if v1 @ v2 < -tolerance * scale:
                continue
            normal = np.cross(v1, v2)
            off_plane = vectors[np.abs(vectors @ (normal / np.linalg.norm(normal))) > tolerance]
            l3 = np.linalg.norm(off_plane, axis=1)
            for v3 in off_plane[l3 <= l3.min() + tolerance]:
                if v1 @ v3 < -tolerance * scale or np.cross(v1, v2) @ v3 <= 0:
                    continue
                frames.append(np.stack([v1, v2, v3]))
    frames = np.array(frames)
    keys = np.stack([-(frames[:, 0] * frames[:, 1]).sum(1), -(frames[:, 0] * frames[:, 2]).sum(1),
                     -(frames[:, 1] * frames[:, 2]).sum(1)], axis=1)
    keep = np.ones(len(frames), dtype=bool)
    for column in keys.T:
        keep &= column <= column[keep].min() + tolerance * scale
    return frames[keep]

"""Periodic neighbour search by cell lists, in vectorised torch.

The convention is exactly that of ``ase.neighborlist.primitive_neighbor_list('ijS', ...)``:
``i`` is the centre atom, ``j`` the neighbour, ``S`` the integer image shift, and

    D = positions[j] - positions[i] + S @ cell,    |D| < cutoff,

with the self pair (i == j and S == 0) excluded. Pairs come in both directions.

Algorithm: the periodic lattice is LLL-reduced (so very skewed cells search few images), positions
are wrapped into the reduced cell, and the cell is cut into bins at least ``cutoff`` thick between
each pair of faces. Bins are padded to a common size so that all pair distances between a bin and
one of its neighbouring bins form one dense block; only half of the neighbouring bins are visited
and the other half of the pairs follows by symmetry. Work and memory grow linearly with the number
of atoms and are chunked so memory stays bounded.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from sciml.graph.validation import as_tensor, check_cutoff, check_finite

# Candidate pair distances evaluated per chunk (bounds peak memory to about 0.5 GB).
_CHUNK_CANDIDATES = 8_000_000

#: How ``max_neighbors`` is applied (see :func:`neighbor_list`).
MAX_NEIGHBORS_RULES = ("ties", "strict", "fairchem")
#: Å: with the "ties" rule, neighbours up to the ``max_neighbors``-th distance plus this are kept.
MAX_NEIGHBORS_TIE_TOLERANCE = 0.01
#: Å^2: fairchem's ``degeneracy_tolerance``, on squared distances (the "fairchem" rule).
FAIRCHEM_DEGENERACY_TOLERANCE = 0.01


def _working_cell(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Replace the vectors of non-periodic directions by an orthonormal complement.

    Shifts are zero along non-periodic directions, so those cell vectors only steer the binning; a
    zero or degenerate vector there (a molecule in ``Atoms()`` with no cell) is legal input.
    """
    periodic = [int(k) for k in range(3) if bool(pbc[k])]
    work = torch.zeros(3, 3, dtype=torch.float64)
    basis = [cell[k] for k in periodic]
    if periodic:
        span = torch.stack(basis)
        if torch.linalg.matrix_rank(span, tol=1e-8 * max(1.0, float(span.abs().max()))) < len(periodic):
            raise ValueError(
                f"cell is singular along its periodic directions (pbc={pbc.tolist()}, cell={cell.tolist()})"
            )
    # Orthonormal complement of the periodic span (SVD: right-singular vectors past the rank).
    if len(periodic) < 3:
        if periodic:
            _, _, vh = torch.linalg.svd(torch.stack(basis), full_matrices=True)
            complement = vh[len(periodic):]
        else:
            complement = torch.eye(3, dtype=torch.float64)
    c = 0
    for k in range(3):
        if bool(pbc[k]):
            work[k] = cell[k]
        else:
            work[k] = complement[c]
            c += 1
    return work


def _face_distances(cell: torch.Tensor) -> torch.Tensor:
    """Perpendicular distances between opposite faces of the cell, (3,)."""
    volume = torch.det(cell).abs()
    crosses = torch.stack(
        [torch.linalg.cross(cell[1], cell[2]), torch.linalg.cross(cell[2], cell[0]), torch.linalg.cross(cell[0], cell[1])]
    )
    return volume / torch.linalg.norm(crosses, dim=1)


def _half_offsets(reach: Tuple[int, int, int]) -> torch.Tensor:
    """Bin offsets that are lexicographically positive, (M, 3) int64."""
    grids = torch.meshgrid(*[torch.arange(-r, r + 1) for r in reach], indexing="ij")
    offsets = torch.stack([g.reshape(-1) for g in grids], dim=1)
    positive = (offsets[:, 0] > 0) | ((offsets[:, 0] == 0) & ((offsets[:, 1] > 0) | ((offsets[:, 1] == 0) & (offsets[:, 2] > 0))))
    return offsets[positive]


def lll_reduce(vectors: torch.Tensor, delta: float = 0.75) -> torch.Tensor:
    """Integer unimodular ``U`` such that ``U @ vectors`` is an LLL-reduced basis.

    vectors: (k, 3) linearly independent rows, k <= 3. Returns U as (k, k) int64. A reduced
    basis is nearly orthogonal, so cell lists on it search few images even for very skewed cells.
    """
    b = vectors.clone()
    k = b.shape[0]
    u = torch.eye(k, dtype=torch.int64)

    def gram_schmidt(basis):
        ortho = basis.clone()
        mu = torch.zeros(k, k, dtype=basis.dtype)
        for a in range(k):
            for c in range(a):
                mu[a, c] = (basis[a] @ ortho[c]) / (ortho[c] @ ortho[c])
                ortho[a] = ortho[a] - mu[a, c] * ortho[c]
        return ortho, mu

    ortho, mu = gram_schmidt(b)
    a = 1
    while a < k:
        for c in range(a - 1, -1, -1):
            q = round(float(mu[a, c]))
            if q:
                b[a] -= q * b[c]
                u[a] -= q * u[c]
                ortho, mu = gram_schmidt(b)
        if ortho[a] @ ortho[a] >= (delta - mu[a, a - 1] ** 2) * (ortho[a - 1] @ ortho[a - 1]):
            a += 1
        else:
            b[[a, a - 1]] = b[[a - 1, a]]
            u[[a, a - 1]] = u[[a - 1, a]]
            ortho, mu = gram_schmidt(b)
            a = max(a - 1, 1)
    return u


def neighbor_list(
    positions: "torch.Tensor | np.ndarray",
    cell: "torch.Tensor | np.ndarray | None",
    pbc: "torch.Tensor | np.ndarray | bool | tuple",
    cutoff: float,
    max_neighbors: Optional[int] = None,
    max_neighbors_rule: str = "ties",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour pairs within ``cutoff`` in ase's ``primitive_neighbor_list('ijS')`` convention.

    Args:
        positions: (N, 3) Cartesian positions, Å. Atoms may lie outside the unit cell.
        cell: (3, 3) cell vectors as rows, Å. Vectors along non-periodic directions may be zero;
            ``None`` means no cell (and requires no periodic direction).
        pbc: (3,) periodic flags (a single bool applies to all three directions).
        cutoff: pair distance cutoff, Å (strict: pairs with ``|D| < cutoff``).
        max_neighbors: if given, keep for each centre only its nearest neighbours, by
            ``max_neighbors_rule``:

            * ``"ties"``: the ``max_neighbors`` nearest and every neighbour within
              :data:`MAX_NEIGHBORS_TIE_TOLERANCE` (0.01 Å) of the ``max_neighbors``-th distance.
              Neighbours tied with the last one kept (periodic images of symmetric cells) are all
              kept, so the graph is a function of the geometry: rotations, permutations and
              supercells give the same graph, where a cut through a shell of equal distances would
              be decided by rounding.
            * ``"strict"``: exactly ``max_neighbors``, ties broken by neighbour index, then shift
              (fairchem's ``enforce_max_neighbors_strictly=True``). A tie at the cut makes the
              graph depend on the orientation, the atom order and the cell.
            * ``"fairchem"``: fairchem's ``enforce_max_neighbors_strictly=False`` rule: every
              neighbour whose squared distance is at most that of the ``(max_neighbors + 1)``-th
              nearest plus :data:`FAIRCHEM_DEGENERACY_TOLERANCE` (0.01 Å^2), so at least
              ``max_neighbors + 1`` when there are more.
        max_neighbors_rule: one of :data:`MAX_NEIGHBORS_RULES`; ignored without ``max_neighbors``.

    Returns:
        ``(i, j, S)``: centre indices (E,), neighbour indices (E,) and integer shifts (E, 3), all
        int64 on the device of ``positions``, sorted by ``i`` (then by distance when
        ``max_neighbors`` is set).

    Raises:
        ValueError: non-finite positions, mismatched shapes, a non-positive cutoff, or a cell
            that is singular along a periodic direction.
    """
    pos_in = as_tensor(positions, "positions")
    device = pos_in.device
    pos = pos_in.detach().to("cpu", torch.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {tuple(pos.shape)}")
    check_finite(pos, "positions")
    cutoff = check_cutoff(cutoff)
    pbc_t = _as_pbc(pbc)
    cell_t = torch.zeros(3, 3, dtype=torch.float64) if cell is None else as_tensor(cell, "cell").detach().to("cpu", torch.float64)
    if cell_t.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {tuple(cell_t.shape)}")
    check_finite(cell_t, "cell")
    if max_neighbors is not None and max_neighbors < 1:
        raise ValueError(f"max_neighbors must be a positive integer or None, got {max_neighbors}")
    check_max_neighbors_rule(max_neighbors_rule)

    i, j, shifts = _search(pos, cell_t, pbc_t, cutoff)
    if max_neighbors is not None:
        i, j, shifts = _cap_neighbors(pos, cell_t, i, j, shifts, max_neighbors, max_neighbors_rule)
    return i.to(device), j.to(device), shifts.to(device)


def check_max_neighbors_rule(rule: str) -> str:
    """Return ``rule`` if it is one of :data:`MAX_NEIGHBORS_RULES`, else raise ValueError."""
    if rule not in MAX_NEIGHBORS_RULES:
        raise ValueError(f"max_neighbors_rule must be one of {MAX_NEIGHBORS_RULES}, got {rule!r}")
    return rule


def _as_pbc(pbc) -> torch.Tensor:
    if isinstance(pbc, (bool, np.bool_)):
        return torch.tensor([bool(pbc)] * 3)
    t = torch.as_tensor(np.asarray(pbc, dtype=bool) if not isinstance(pbc, torch.Tensor) else pbc).to("cpu").bool()
    if t.shape != (3,):
        raise ValueError(f"pbc must be a bool or have shape (3,), got shape {tuple(t.shape)}")
    return t


def _search(pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float):
    n = pos.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 3, dtype=torch.int64)
    # Search in an LLL-reduced basis of the periodic lattice; shifts found there map back to the
    # caller's cell through S = S_reduced @ R.
    periodic = pbc.nonzero().reshape(-1)
    reduction = torch.eye(3, dtype=torch.int64)
    if periodic.numel():
        _working_cell(cell, pbc)  # rejects a singular periodic lattice before reducing it
        reduction[periodic.unsqueeze(1), periodic.unsqueeze(0)] = lll_reduce(cell[periodic])
    work = _working_cell(reduction.to(torch.float64) @ cell, pbc)
    frac = pos @ torch.linalg.inv(work)
    wrap = torch.where(pbc, torch.floor(frac), torch.zeros_like(frac))
    frac = frac - wrap
    wrap = wrap.to(torch.int64)
    wrapped = frac @ work

    # Fractional extent per axis: the unit interval when periodic, the atoms' span otherwise.
    low = torch.where(pbc, torch.zeros(3, dtype=torch.float64), frac.min(dim=0).values)
    high = torch.where(pbc, torch.ones(3, dtype=torch.float64), frac.max(dim=0).values)
    thickness = _face_distances(work) * (high - low)
    nbins = torch.clamp(torch.floor(thickness / cutoff), min=1).to(torch.int64)
    while int(torch.prod(nbins)) > 2 * n + 8:  # a near-empty box needs no fine table
        nbins = torch.clamp(nbins // 2, min=1)
    reach = torch.ceil(cutoff / (thickness / nbins).clamp(min=1e-300))
    # Along an open axis there is no point searching past the number of bins.
    reach = torch.where(pbc, reach, torch.minimum(reach, (nbins - 1).to(torch.float64))).to(torch.int64)

    span = torch.where(high > low, high - low, torch.ones_like(high))
    coords = torch.floor((frac - low) / span * nbins).to(torch.int64)
    coords = torch.minimum(coords.clamp(min=0), nbins - 1)
    flat = (coords[:, 0] * nbins[1] + coords[:, 1]) * nbins[2] + coords[:, 2]
    num_bins = int(torch.prod(nbins))

    # Padded bin table: table[b, s] is the s-th atom of bin b, or n (a padding atom at NaN).
    order = torch.argsort(flat, stable=True)
    count = torch.bincount(flat, minlength=num_bins)
    start = torch.cumsum(count, 0) - count
    width = int(count.max())
    table = torch.full((num_bins, width), n, dtype=torch.int64)
    table[flat[order], torch.arange(n) - start[flat[order]]] = order
    # The block test runs in float32 with a margin covering its rounding; the exact float64 test
    # below decides every pair, so pairs at the cutoff are decided exactly as ase decides them.
    padded = torch.cat([wrapped, torch.full((1, 3), float("nan"), dtype=torch.float64)]).to(torch.float32)
    shift_cart = work.to(torch.float32)
    loose_sq = (cutoff + 1e-4 * (1.0 + float(wrapped.abs().max()) + cutoff)) ** 2

    occupied = (count > 0).nonzero().reshape(-1)
    occupied_coords = torch.stack([occupied // (nbins[1] * nbins[2]), (occupied // nbins[2]) % nbins[1], occupied % nbins[2]], 1)
    offsets = _half_offsets(tuple(int(r) for r in reach))
    offsets = torch.cat([torch.zeros(1, 3, dtype=torch.int64), offsets])
    upper = torch.triu(torch.ones(width, width, dtype=torch.bool), diagonal=1)

    cutoff_sq = cutoff * cutoff
    per_bin = offsets.shape[0] * width * width
    chunk = max(1, _CHUNK_CANDIDATES // per_bin)
    found_i, found_j, found_s = [], [], []
    for lo in range(0, occupied.numel(), chunk):
        centre_bins = occupied[lo:lo + chunk]
        target = occupied_coords[lo:lo + chunk, None, :] + offsets[None]  # (b, m, 3)
        shift = torch.div(target, nbins, rounding_mode="floor")
        valid = ((shift == 0) | pbc).all(dim=-1)  # open axes have no images
        target = target - shift * nbins
        target_flat = (target[..., 0] * nbins[1] + target[..., 1]) * nbins[2] + target[..., 2]
        target_flat = torch.where(valid, target_flat, 0)
        centre_atoms = table[centre_bins]  # (b, w)
        neighbour_atoms = table[target_flat]  # (b, m, w)
        neighbour_atoms = torch.where(valid[..., None], neighbour_atoms, n)
        centre_pos = padded[centre_atoms]  # (b, w, 3)
        neighbour_pos = padded[neighbour_atoms] + (shift.to(torch.float32) @ shift_cart)[:, :, None, :]
        dist_sq = torch.zeros(centre_bins.numel(), offsets.shape[0], width, width, dtype=torch.float32)
        for axis in range(3):
            diff = neighbour_pos[:, :, None, :, axis] - centre_pos[:, None, :, None, axis]
            dist_sq += diff * diff
        close = dist_sq < loose_sq
        close[:, 0] &= upper  # within one bin (offset 0), each unordered pair once
        b, m, sc, sn = close.nonzero(as_tuple=True)
        found_i.append(centre_atoms[b, sc])
        found_j.append(neighbour_atoms[b, m, sn])
        found_s.append(shift[b, m])
    hi, hj, hs = torch.cat(found_i), torch.cat(found_j), torch.cat(found_s)
    # Undo the wrapping and the reduction, then the exact test (rounding is sign-symmetric, so the
    # mirrored pair (j, i, -S) has exactly the same distance).
    hs = (hs + wrap[hi] - wrap[hj]) @ reduction
    d = pos[hj] - pos[hi] + hs.to(torch.float64) @ cell
    keep = (d * d).sum(dim=1) < cutoff_sq
    hi, hj, hs = hi[keep], hj[keep], hs[keep]
    i = torch.cat([hi, hj])
    j = torch.cat([hj, hi])
    s = torch.cat([hs, -hs])
    by_centre = torch.argsort(i, stable=True)
    return i[by_centre], j[by_centre], s[by_centre]


def _cap_neighbors(pos, cell, i, j, shifts, max_neighbors: int, rule: str):
    """Keep each centre's nearest neighbours by ``rule`` (see :func:`neighbor_list`); the result is
    sorted by (i, distance, j, S)."""
    if i.numel() == 0:
        return i, j, shifts
    d = pos[j] - pos[i] + shifts.to(torch.float64) @ cell
    dist = torch.linalg.norm(d, dim=1)
    # Lexicographic sort by (i, dist, j, S) through successive stable sorts, last key first.
    perm = torch.arange(i.numel())
    for key in (shifts[:, 2], shifts[:, 1], shifts[:, 0], j, dist, i):
        perm = perm[torch.argsort(key[perm], stable=True)]
    i, j, shifts, dist = i[perm], j[perm], shifts[perm], dist[perm]
    counts = torch.bincount(i)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(i.numel()) - first[i]
    if rule == "strict":
        keep = rank < max_neighbors
    elif rule == "ties":
        # the max_neighbors-th distance of each centre (its farthest when it has fewer)
        last = first + torch.clamp(counts, max=max_neighbors) - 1
        keep = dist <= dist[last.clamp(min=0)][i] + MAX_NEIGHBORS_TIE_TOLERANCE
    else:
        squared = (d * d).sum(dim=1)[perm]
        beyond = first + max_neighbors  # the (max_neighbors + 1)-th, where a centre has one
        has_more = counts > max_neighbors
        limit = torch.full(counts.shape, float("inf"), dtype=torch.float64)
        limit[has_more] = squared[beyond[has_more]] + FAIRCHEM_DEGENERACY_TOLERANCE
        keep = squared <= limit[i]
    return i[keep], j[keep], shifts[keep]

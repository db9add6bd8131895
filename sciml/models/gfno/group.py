"""The point groups G-FNO is equivariant to, acting on two axes of a square grid.

An element g = (r, m) acts on a field f as ``rot90(flip(f, x) if m else f, r)``: flip the first
axis of the plane if m, then rotate by r quarter turns with :func:`torch.rot90`. On an n x n
array this rotates about the array's centre, the point ((n - 1)/2, (n - 1)/2) in index units:
f'[i, j] = f[j, n - 1 - i], which is the rotation about the origin, f'[i, j] = f[j, -i mod n],
followed by a shift of one cell. On a centred spectrum of odd size (frequencies -k..k) the same
call is exactly the rotation about frequency zero.

Features on the group ("regular" channels) carry one value per element h; g acts on them by
moving the field and permuting the group axis: (g.F)_h(x) = F_{g^-1 h}(g^-1 x).
"""

from __future__ import annotations

from typing import List, Tuple

import torch

GROUPS = ("trivial", "p4", "p4m")


class PointGroup:
    """The trivial group, p4 (4 rotations by 90 degrees) or p4m (p4 and reflections, 8 elements).

    Elements are numbered ``e = r + 4 m`` (r quarter turns after m reflections); element 0 is
    the identity. ``product[a][b]`` is the index of the element ``a b`` (apply b, then a).
    """

    def __init__(self, name: str):
        if name not in GROUPS:
            raise ValueError(f"unknown group {name!r}; available: {', '.join(GROUPS)}")
        self.name = name
        rotations = 1 if name == "trivial" else 4
        reflections = 2 if name == "p4m" else 1
        self.elements: List[Tuple[int, int]] = [(r, m) for m in range(reflections) for r in range(rotations)]
        self.order = len(self.elements)
        # the multiplication table, read off the action on a probe with no symmetry of its own
        probe = torch.arange(9).view(3, 3)
        images = [self.act(probe, e, (0, 1)) for e in range(self.order)]
        self.product = [
            [next(c for c in range(self.order) if torch.equal(images[c], self.act(images[b], a, (0, 1))))
             for b in range(self.order)]
            for a in range(self.order)
        ]
        self.inverse = [self.product[a].index(0) for a in range(self.order)]

    def act(self, x: torch.Tensor, element: int, dims: Tuple[int, int]) -> torch.Tensor:
        """The field ``x`` transformed by ``element`` on its axes ``dims`` (the plane (x, y))."""
        rotation, mirror = self.elements[element]
        if mirror:
            x = x.flip(dims[0])
        return torch.rot90(x, rotation, dims) if rotation else x

    def act_regular(self, x: torch.Tensor, element: int, channel_dim: int, dims: Tuple[int, int]) -> torch.Tensor:
        """Regular features ``x`` transformed by ``element``: the field moves on ``dims`` and the group
        axis, the minor part of ``channel_dim`` (channels are (channel, element) pairs), is permuted."""
        x = self.act(x, element, dims)
        shape = x.shape
        channel_dim = channel_dim % x.dim()
        grouped = x.reshape(*shape[:channel_dim], -1, self.order, *shape[channel_dim + 1:])
        # new[g k] = old[k]
        source = [self.product[self.inverse[element]][h] for h in range(self.order)]
        return grouped.index_select(channel_dim + 1, torch.tensor(source, device=x.device)).reshape(shape)

    def relative(self) -> torch.Tensor:
        """(order, order) int64: entry [h, k] is the index of h^-1 k."""
        return torch.tensor([[self.product[self.inverse[h]][k] for k in range(self.order)] for h in range(self.order)])

    def __repr__(self) -> str:
        return f"PointGroup({self.name!r})"

"""The 90-degree rotations and reflections of a periodic grid that fix the origin (the group p4m).

A field sampled at ``x_i = i / n`` on the periodic unit square is rotated about the grid origin
``(0, 0)``, which is a grid point and a centre of symmetry of the periodic square. The
counter-clockwise rotation ``R(x, y) = (-y, x)`` acts as ``w'(p) = w(R^-1 p)``, that is

    w'[i, j] = w[j, -i mod n].

``torch.rot90`` instead maps ``w'[i, j] = w[j, n - 1 - i]``: a rotation about the cell centre
``((n - 1) / 2n, (n - 1) / 2n)``, which is a different map (a rotation about the origin followed by
a shift of one cell). Both permute grid points and commute with spectral derivatives, but only the
rotation about the origin leaves forcings such as ``cos 4 pi x + cos 4 pi y`` invariant, so only it
maps solutions of the forced Navier-Stokes equations to solutions. Subsampling with a stride
(``w[::s, ::s]``) keeps the origin, so the convention holds on coarse and fine grids alike.

The reflection is ``x -> -x``: ``w'[i, j] = w[-i mod n, j]``. Vorticity is a pseudo-scalar: the
reflection of a flow has vorticity ``-w'`` (see :mod:`sciml.data.pde.navier_stokes`).
"""

from __future__ import annotations

import torch

# shifts (along dims[0], dims[1]) that turn torch.rot90 (about the cell centre) into a rotation about the origin
_ROT90_SHIFTS = {0: (0, 0), 1: (1, 0), 2: (1, 1), 3: (0, 1)}


def rotate90_periodic(field: torch.Tensor, k: int = 1, dims: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """Rotate ``field`` by ``k`` quarter turns counter-clockwise about the grid origin.

    Args:
        field: any tensor whose axes ``dims`` are the square periodic grid ``(x, y)``, e.g.
            ``(batch, x, y, t)`` with the default ``dims=(1, 2)``.
        k: number of quarter turns (any integer; negative turns clockwise).
        dims: the ``(x, y)`` axes.

    Returns:
        A tensor of the same shape with ``out[..., i, j, ...] = field[..., j, -i mod n, ...]`` for
        ``k = 1``.
    """
    n_x, n_y = field.shape[dims[0]], field.shape[dims[1]]
    if n_x != n_y:
        raise ValueError(f"rotate90_periodic needs a square grid, got {n_x} x {n_y} on axes {dims}")
    k = k % 4
    return torch.roll(torch.rot90(field, k, dims), _ROT90_SHIFTS[k], dims)


def reflect_periodic(field: torch.Tensor, dims: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """Reflect ``field`` across the line ``x = 0``: ``out[..., i, j, ...] = field[..., -i mod n, j, ...]``.

    Args:
        field: any tensor whose axes ``dims`` are the periodic grid ``(x, y)``.
        dims: the ``(x, y)`` axes; only ``dims[0]`` is reflected.
    """
    return torch.roll(torch.flip(field, (dims[0],)), 1, dims[0])

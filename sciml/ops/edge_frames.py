"""Edge frames of eSCN / EquiformerV2 models: per-edge Wigner-D matrices and the rotations of
features into each edge's frame (m-major, orders |m| <= mmax) and back.

Models build one :class:`EdgeFrames` per forward pass and share it between layers; which kernels
rotate is chosen here, by :mod:`sciml.ops.backends`, never by the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch

from sciml.ops import backends
from sciml.ops.so2 import m_major_order, rotate_back_scales
from sciml.ops.wigner import edge_rotation, wigner_D_blocks


@dataclass
class EdgeFrames:
    """Per-edge Wigner-D matrices D(R_e) (R_e takes the edge onto +y), built once per forward and
    shared by every layer of an eSCN / EquiformerV2 model.

    Build them with :meth:`of`, which picks the rotation backend (the "rotation" family of
    :mod:`sciml.ops.backends`: torch ``bmm`` over all degrees, or the fused Triton kernels on
    GPUs) once for the forward pass.

    Attributes:
        blocks: [D^l (E, 2l+1, 2l+1) for l = 0..lmax] (:func:`sciml.ops.wigner.wigner_D_blocks`).
        lmax, mmax: degrees of the features and orders kept in the edge frame.
        packed: the same matrices in the rotation kernels' layout, or None (torch path).
        kernels: the module of those kernels (None on the torch path).
    """

    blocks: List[torch.Tensor]
    lmax: int
    mmax: int
    packed: Optional[torch.Tensor] = None
    kernels: Any = None
    _to_matrix: Optional[torch.Tensor] = field(default=None, repr=False)
    _from_matrix: Optional[torch.Tensor] = field(default=None, repr=False)

    @classmethod
    def of(cls, vectors: torch.Tensor, lmax: int, mmax: int, backend: str = "auto") -> "EdgeFrames":
        """The frames of edge vectors (E, 3): R_e from :func:`~sciml.ops.wigner.edge_rotation`."""
        blocks = wigner_D_blocks(lmax, edge_rotation(vectors))
        name = backends.resolve("rotation", backend, vectors.device, vectors.dtype)
        if name == "torch":
            return cls(blocks, lmax, mmax)
        kernels = backends.implementation("rotation", name)
        return cls(blocks, lmax, mmax, kernels.pack_wigner(blocks, lmax, vectors.shape[0]), kernels)

    def _matrices(self):
        """(E, K', K) rows of D in m-major order and (E, K, K') its rescaled transpose: one bmm
        per rotation for all degrees, built on first use and shared by every layer."""
        if self._to_matrix is None:
            first = self.blocks[0]
            size = (self.lmax + 1) ** 2
            full = first.new_zeros(first.shape[0], size, size)
            for l, block in enumerate(self.blocks):
                full[:, l * l:(l + 1) ** 2, l * l:(l + 1) ** 2] = block
            order = [l * l + l + m for l, m in m_major_order(self.lmax, self.mmax)]
            self._to_matrix = full[:, torch.tensor(order, device=first.device)]
            scales = rotate_back_scales(self.lmax, self.mmax)
            scale = torch.tensor([scales[l] for l in range(self.lmax + 1) for _ in range(2 * l + 1)],
                                 dtype=first.dtype, device=first.device)
            self._from_matrix = self._to_matrix.transpose(1, 2) * scale.view(1, -1, 1)
        return self._to_matrix, self._from_matrix

    def to_edge(self, x: torch.Tensor) -> torch.Tensor:
        """(E, (lmax+1)^2, C) global frame -> (E, K', C) m-major edge frame, |m| <= mmax.

        Rotations run in the Wigner matrices' dtype even under autocast: rounding them to bf16
        would break the orthogonality that equivariance rests on."""
        with torch.autocast(x.device.type, enabled=False):
            return self._to_edge(x.to(self.blocks[0].dtype))

    def _to_edge(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.kernels.rotate_to_edge_frame(x, self.packed, self.lmax, self.mmax)
        return torch.bmm(self._matrices()[0], x)

    def from_edge(self, x: torch.Tensor, degrees: Optional[int] = None) -> torch.Tensor:
        """(E, K', C) m-major edge frame -> (E, degrees^2, C) global frame (all degrees by default),
        rescaling l > mmax by sqrt((2l+1)/(2 mmax+1)) as fairchem's ``rotate_inv``."""
        with torch.autocast(x.device.type, enabled=False):
            return self._from_edge(x.to(self.blocks[0].dtype), degrees)

    def _from_edge(self, x: torch.Tensor, degrees: Optional[int]) -> torch.Tensor:
        if degrees is None or degrees > self.lmax:
            degrees = self.lmax + 1
        if self.packed is not None:
            out = self.kernels.rotate_from_edge_frame(x, self.packed, self.lmax, self.mmax, True)
            return out[:, : degrees * degrees]
        return torch.bmm(self._matrices()[1][:, : degrees * degrees], x)

    def from_edge_m0(self, x: torch.Tensor) -> torch.Tensor:
        """D(R_e)^T of features whose only non-zero orders are m = 0: x (E, lmax+1, C), one
        coefficient per degree -> (E, (lmax+1)^2, C), with the same rescaling as :meth:`from_edge`.
        The m = 0 entries come first in the m-major layout, so only those columns are used."""
        with torch.autocast(x.device.type, enabled=False):
            return torch.bmm(self._matrices()[1][:, :, : self.lmax + 1], x.to(self.blocks[0].dtype))

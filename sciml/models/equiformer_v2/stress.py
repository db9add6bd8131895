"""EquiformerV2's direct stress head: fairchem's ``rank2_symmetric_head`` with ``decompose=True``
(``heads/rank2.py``, the OMat24 / MPtrj / sAlex models).

The stress is predicted as its isotropic part (one l = 0 number per structure) and its
anisotropic part (five l = 2 components in e3nn's basis), each de-standardised by its own
normaliser, then composed into a symmetric 3x3 tensor with the Clebsch-Gordan change of basis.
The head reads only the final node features and the edge vectors; it is trained on ase-convention
stress (eV/Å^3, positive under tension), so its output is ase's stress as is.

Symmetry (fairchem's design, reproduced as is): the isotropic part, hence the trace, is invariant;
the anisotropic MLP acts on each of the five l = 2 components separately with biases and SiLU,
so the anisotropic part rotates with the structure only as far as training made it (with random
weights, errors of a quarter of the stress).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sciml.models.equiformer_v2.attention import gather_pairs
from sciml.models.equiformer_v2.layers import EquivariantLayerNorm
from sciml.ops import scatter
from sciml.ops.spherical_harmonics import spherical_harmonics, spherical_harmonics_upto


def rank2_change_of_basis(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(9, 9): row b maps irrep component b (0: l = 0; 1..3: l = 1; 4..8: l = 2, e3nn's m order)
    onto the row-major flattened 3x3 tensor (fairchem's ``cg_change_mat(2)``)."""
    a, b, c = 3 ** -0.5, 2 ** -0.5, 6 ** -0.5
    rows = [
        [a, 0, 0, 0, a, 0, 0, 0, a],
        [0, 0, 0, 0, 0, b, 0, -b, 0],
        [0, 0, -b, 0, 0, 0, b, 0, 0],
        [0, b, 0, -b, 0, 0, 0, 0, 0],
        [0, 0, b, 0, 0, 0, b, 0, 0],
        [0, b, 0, b, 0, 0, 0, 0, 0],
        [-c, 0, 0, 0, 2 * c, 0, 0, 0, -c],
        [0, 0, 0, 0, 0, b, 0, b, 0],
        [-b, 0, 0, 0, 0, 0, 0, 0, b],
    ]
    return torch.tensor(rows, dtype=dtype)


def _mlp(width: int, layers: int) -> nn.Sequential:
    """``layers`` Linear maps width -> ... -> 1 with SiLU between (fairchem's ``scalar_MLP``)."""
    modules = []
    for k in range(layers):
        last = k == layers - 1
        linear = nn.Linear(width, 1 if last else width)
        bound = 1.0 / math.sqrt(width)
        nn.init.uniform_(linear.weight, -bound, bound)
        nn.init.zeros_(linear.bias)
        modules += [linear] if last else [linear, nn.SiLU()]
    return nn.Sequential(*modules)


class Rank2Decomposition(nn.Module):
    """Per-node MLPs of the isotropic and anisotropic parts (fairchem ``Rank2DecompositionEdgeBlock``,
    node-level MLPs, structure means)."""

    def __init__(self, width: int, layers: int):
        super().__init__()
        self.scalar_MLP = _mlp(width, layers)
        self.irrep2_MLP = _mlp(width, layers)


class Rank2StressHead(nn.Module):
    """Direct stress from the final node features x (N, (lmax+1)^2, C).

    Per edge (sender j, receiver i, vector r): the features [x_j, x_i] (with ``source_target``,
    else x_i alone) are contracted over their coefficients with the layer-normed spherical
    harmonics Y(r) of degrees 0..lmax (of r itself, not r/|r|; orthonormal "integral"
    normalisation, e3nn's default, as fairchem) and layer-normed: e (E, W). The isotropic input of
    node i is the mean of e over its edges, the anisotropic one the mean of Y^2(r/|r|) (x) e
    (5, W); MLPs map them to 1 and 5 numbers, which are averaged over each structure.

    Buffers ``isotropic_scale/shift`` and ``anisotropic_scale/shift`` are the normalisers the
    parts are de-standardised with before composition (identity by default).
    """

    def __init__(self, channels: int, lmax: int, mlp_layers: int = 2, source_target: bool = True):
        super().__init__()
        self.lmax, self.source_target = lmax, source_target
        width = 2 * channels if source_target else channels
        self.sphharm_norm = EquivariantLayerNorm(lmax, 1)
        self.xedge_layer_norm = nn.LayerNorm(width)
        self.block = Rank2Decomposition(width, mlp_layers)
        self.register_buffer("isotropic_scale", torch.ones(()))
        self.register_buffer("isotropic_shift", torch.zeros(()))
        self.register_buffer("anisotropic_scale", torch.ones(()))
        self.register_buffer("anisotropic_shift", torch.zeros(5))
        self.register_buffer("change_of_basis", rank2_change_of_basis(torch.get_default_dtype()), persistent=False)

    def forward(self, x: torch.Tensor, vectors: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor,
                num_graphs: int) -> torch.Tensor:
        """x (N, K, C), edge vectors (E, 3) Å, ``edge_index`` (2, E) receiver-first, ``batch`` (N,)
        -> stress (B, 3, 3) eV/Å^3 in ase's convention."""
        receiver = edge_index[0]
        # e3nn's default "integral" normalisation, as fairchem calls it
        harmonics = self.sphharm_norm(spherical_harmonics_upto(self.lmax, vectors, False, "integral")[:, :, None])
        pairs = gather_pairs(x, edge_index) if self.source_target else x.index_select(0, receiver)
        edge = self.xedge_layer_norm(torch.einsum("ekc,ek->ec", pairs, harmonics[:, :, 0]))  # (E, W)
        irrep2 = spherical_harmonics(2, vectors, normalize=True, normalization="integral")  # (E, 5)
        num_nodes = x.shape[0]
        node_scalar = self.block.scalar_MLP(scatter(edge, receiver, num_nodes, "mean"))  # (N, 1)
        node_irrep2 = self.block.irrep2_MLP(scatter(irrep2[:, :, None] * edge[:, None, :], receiver, num_nodes, "mean"))
        isotropic = scatter(node_scalar, batch, num_graphs, "mean") * self.isotropic_scale + self.isotropic_shift
        anisotropic = scatter(node_irrep2[:, :, 0], batch, num_graphs, "mean") * self.anisotropic_scale + self.anisotropic_shift
        irreps = torch.cat([isotropic, isotropic.new_zeros(num_graphs, 3), anisotropic], 1)  # (B, 9)
        return (irreps @ self.change_of_basis.to(irreps.dtype)).view(num_graphs, 3, 3)

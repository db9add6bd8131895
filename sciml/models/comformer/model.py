"""iComFormer and eComFormer (Yan et al., "Complete and Efficient Graph Transformers for Crystal
Material Property Prediction", ICLR 2024) on sciml's lattice-based crystal graph.

The graph (:class:`~sciml.graph.GraphSpec` with ``knn`` and ``lattice_frame``) gives every atom
its k nearest neighbours with ties and every crystal its right-handed lattice frame
(v1, v2, v3). As in the reference (``use_lattice=True``), every atom also gets self-loop edges
along its lattice vectors. By default (``lattice_self_loops="frame"``) these are the frame's own
three vectors; ``"both"`` adds their reverses too, exactly the reference's graph; ``"none"``
adds none.

* iComFormer: node attention -> lattice edge update (each edge attends to the three lattice
  vectors through |v_k| and cos(r_ij, v_k)) -> three more node attention layers.
* eComFormer: node attention -> equivariant tensor-product update (spherical harmonics l <= 2 of
  the edge vectors) -> two more node attention layers.

Chirality. The reference's features cannot tell a chiral crystal from its mirror image, except
through rounding-level effects:

* The lattice frame is right-handed for both hands, so the mirror image M X of a crystal X with
  frame F is read in the frame -M F (right-handed, with F's lengths and angles; the one chosen
  for Se, Te, quartz and triclinic crystals). Since -M is a rotation, iComFormer sees M X exactly
  as it sees the inverted crystal -X in the frame F: every edge vector reversed. The graph is
  undirected, so the set of all edge features is the same for both hands; only which atom holds
  which edge differs. With mean pooling the part of the output linear in that difference cancels
  (for elemental crystals exactly), and what is left is second order: untrained mirror-image
  differences of 1e-11 relative for trigonal Se, 1e-7 for alpha-quartz, 1e-6 for random P1
  crystals.
* eComFormer's tensor products respect parity and end in true scalars (0e): the model is
  E(3)-invariant given its edges, and the frame self-loops (+v1, +v2, +v3) are the only thing
  that can carry the hand. A crystal with a 2-fold axis along v1 - v2 and perpendicular to v3
  (Se, Te, quartz: P3_121/P3_221) maps the loop set {v1, v2, v3} onto {-v1, -v2, -v3}, so the
  mirror image gives exactly the same output (differences of 1e-16). With ``"both"`` loops it
  is blind to every mirror image.

``chirality=True`` (the default for properties, ``"auto"``) therefore adds, for every edge, the pseudoscalar of
:func:`~sciml.models.comformer.layers.chirality_pseudoscalars` (a triple product of the bond and
the two atoms' mean neighbour directions, which changes sign under a mirror and not under a
rotation or an edge reversal), encoded like the angles and added to the distance encoding of
the edge features (zero on the lattice self-loops); both variants then read it everywhere edge
features are read (eComFormer: in the tensor-product weights). Untrained mirror-image
differences become ~1e-2 relative for Se, Te and quartz (a 1% strain moves the output by
~1e-4), and rotations still leave outputs unchanged to rounding. ``chirality=False`` with
``lattice_self_loops="both"`` is exactly the reference (the paper's architecture).

Both read CGCNN-style 92-dimensional atom features (:mod:`sciml.models.atom_features`) and end
with mean pooling -> Linear + SiLU -> Linear. With ``target="energy"`` the readout is per atom
instead and feeds the shared energy head (total energy in eV, forces and stress by autograd,
for relaxations); any other target is an intensive property, de-standardised with the training
mean and standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from sciml.graph import AtomicGraph
from sciml.graph.message_passing import MessagePassing
from sciml.models.atom_features import CGCNN_FEATURE_SIZE, cgcnn_feature_table
from sciml.models.comformer.layers import (
    CosineEmbedding,
    EdgeLatticeUpdate,
    EquivariantUpdate,
    NodeAttention,
    ReciprocalDistanceEmbedding,
    chirality_pseudoscalars,
)
from sciml.models.contract import ENERGY_OUTPUTS, Model, ModelOptions, Output, register_model
from sciml.models.domain import PROPERTY_UNITS
from sciml.models.heads import EnergyHead, PropertyHead

#: The reference's parameters that its forward never uses (``ComformerConv_edge.lemb`` and
#: ``lin_edge_len``); sciml leaves them out, so iComFormer has this many fewer parameters.
UNUSED_REFERENCE_PARAMETERS = 3 * 32 + (256 + 32) * 256 + 256


@dataclass(frozen=True)
class ComFormerOptions(ModelOptions):
    """Options shared by iComFormer and eComFormer.

    Attributes:
        target: name of the predicted property ("energy": total energy with forces and stress).
        node_layers: number of node attention layers (iComFormer 4, eComFormer 3).
        features: node and edge feature width (256). rbf_bins: Gaussians of the encodings (256).
        fc_features: width of the readout's hidden layer (256).
        k: neighbours per atom of the crystal graph (25). search_radius: its first search radius, Å.
        lattice_self_loops: "frame" (+v_k), "both" (+v_k and -v_k, as the reference) or "none".
        chirality: add the handedness feature of every edge (see the module docstring); False
            (with ``lattice_self_loops="both"``) is the reference's architecture; "auto": for
            properties, not for ``target="energy"`` (the energy of a mirror image is the same, and
            the feature's steep slope at achiral geometries roughened the forces of energy models:
            force MAE 172 against 119 meV/Å without it on the EMT relaxation test).
        norm: "batch" (the reference's BatchNorm), "layer" (LayerNorm), or "auto": batch norm
            for properties, layer norm for ``target="energy"``, whose forces and stress must not
            depend on the other structures of a training batch.
        """

    target: str = "formation_energy_peratom"
    node_layers: int = 4
    features: int = 256
    rbf_bins: int = 256
    fc_features: int = 256
    k: int = 25
    search_radius: float = 4.0
    lattice_self_loops: str = "frame"
    norm: str = "auto"
    chirality: Union[bool, str] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lattice_self_loops not in ("frame", "both", "none"):
            raise ValueError(f"lattice_self_loops must be 'frame', 'both' or 'none', got {self.lattice_self_loops!r}")
        if self.node_layers < 2:
            raise ValueError(f"ComFormer needs at least 2 node layers (one before the update), got {self.node_layers}")
        if isinstance(self.chirality, str) and self.chirality != "auto":
            raise ValueError(f"chirality must be True, False or 'auto', got {self.chirality!r}")


@dataclass(frozen=True)
class IComFormerOptions(ComFormerOptions):
    """Options of :class:`IComFormer` (see :class:`ComFormerOptions`)."""


@dataclass(frozen=True)
class EComFormerOptions(ComFormerOptions):
    """Options of :class:`EComFormer`: 3 node layers, and the irreps of the equivariant update,
    ``scalars x 0e + vectors x 1o + vectors x 2e``."""

    node_layers: int = 3
    scalars: int = 64
    vectors: int = 8


class ComFormer(MessagePassing, Model):
    """Shared structure of iComFormer and eComFormer; build them by name with
    ``build_model("icomformer")`` / ``build_model("ecomformer")``.

    Options: :class:`ComFormerOptions`.
    """

    #: right-handed lattice frames tell mirror images apart: invariant under rotations, not reflections
    symmetry = "SE(3)"
    heads = ("readout", "head")

    def __init__(self, options: ComFormerOptions):
        super().__init__(cutoff=options.search_radius, knn=options.k, lattice_frame=True)
        self.options = o = options
        target = o.target
        self.norm = o.norm if o.norm != "auto" else ("layer" if target == "energy" else "batch")
        # mirror images have equal energies (and forces mirrored): an energy model stays blind to the hand
        self.chirality = target != "energy" if o.chirality == "auto" else bool(o.chirality)
        self.target = target
        self.lattice_self_loops = o.lattice_self_loops
        features, fc_features = o.features, o.fc_features
        self.register_buffer("atom_features", cgcnn_feature_table().to(torch.get_default_dtype()))
        self.atom_embedding = nn.Linear(CGCNN_FEATURE_SIZE, features)
        self.rbf = ReciprocalDistanceEmbedding(o.rbf_bins, features)
        self.chirality_embedding = None  # made by _add_chirality_embedding, after the variant's layers
        self.att_layers = nn.ModuleList(NodeAttention(features, features, self.norm) for _ in range(o.node_layers))
        if target == "energy":
            self.readout = nn.Sequential(nn.Linear(features, fc_features), nn.SiLU(), nn.Linear(fc_features, 1))
            self.head = EnergyHead()
        else:
            self.head = PropertyHead(features, 1, pooling="mean", pool_before_mlp=True, hidden=fc_features, name=target)

    def _add_chirality_embedding(self) -> None:
        """Create the chirality encoding (if ``chirality``) after every other layer, so that a model
        seeded alike has the weights of the reference architecture plus this encoding."""
        if self.chirality:
            self.chirality_embedding = CosineEmbedding(self.options.rbf_bins, self.options.features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A state dict saved before the chirality feature existed has no ``chirality_embedding``
        weights: it loads as the model it was saved from, without the feature (``chirality``
        becomes False in :attr:`options`)."""
        saved = any(k.startswith(prefix + "chirality_embedding.") for k in state_dict)
        if self.chirality_embedding is not None and not saved:
            self.chirality_embedding = None
            self.chirality = False
            self.options = self.options.replace(chirality=False)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------------- the variant's update
    def update(self, x, edge_features, edge_index, vectors, frame, edge_graph):
        """The variant's block between the first and second node layers: returns (x, edge_features)."""
        raise NotImplementedError

    @property
    def forces(self) -> Optional[str]:
        """"conservative" for energy models, None for property models."""
        return "conservative" if self.target == "energy" else None

    @property
    def outputs(self) -> Dict[str, Output]:
        """Energy outputs for ``target="energy"``, else the target property (units of its dataset)."""
        if self.target == "energy":
            return dict(ENERGY_OUTPUTS)
        return {self.target: Output("scalar", PROPERTY_UNITS.get(self.target, ""))}

    def check_elements(self, graph: AtomicGraph) -> None:
        """Raise ValueError for atomic numbers without CGCNN atom features."""
        z = graph.atomic_numbers
        if int(z.max()) >= self.atom_features.shape[0] or bool((self.atom_features[z].abs().sum(1) == 0).any()):
            bad = sorted({int(a) for a in z if int(a) >= self.atom_features.shape[0] or not bool(self.atom_features[a].any())})
            raise ValueError(f"ComFormer has no atom features for atomic numbers {bad}")

    # ----------------------------------------------------------------------- forward
    def forward(self, graph: AtomicGraph, compute_forces: bool = False, compute_stress: bool = False) -> Dict[str, torch.Tensor]:
        """Returns ``{target: (B,)}``; for ``target="energy"`` the energy head's outputs (``energy``
        (B,) eV, ``energies``, and with ``compute_forces``/``compute_stress`` ``forces`` (N, 3)
        eV/Å and ``stress`` (B, 3, 3) eV/Å^3)."""
        self.check_graph(graph)
        z = graph.atomic_numbers
        energy = self.target == "energy"
        stress = energy and compute_stress
        derivatives = energy and (compute_forces or stress)
        geometry = self.geometry(graph, forces=derivatives, stress=stress)
        frame = graph.lattice_frame.to(geometry.cell.dtype) @ geometry.cell  # (B, 3, 3) Å, rows v1, v2, v3
        edge_index, vectors = graph.edge_index, geometry.vectors
        if self.chirality_embedding is not None:
            chirality = chirality_pseudoscalars(vectors, edge_index, graph.num_nodes)
        if self.lattice_self_loops != "none":
            loops = frame[graph.batch].reshape(-1, 3)  # (3N, 3): v1, v2, v3 of every atom
            if self.lattice_self_loops == "both":
                loops = torch.stack([loops, -loops], 1).reshape(-1, 3)
            atoms = torch.arange(graph.num_nodes, device=z.device).repeat_interleave(loops.shape[0] // graph.num_nodes)
            edge_index = torch.cat([edge_index, atoms.expand(2, -1)], dim=1)
            vectors = torch.cat([vectors, loops])
        edge_graph = graph.batch[edge_index[0]]
        x = self.atom_embedding(self.atom_features[z])
        edge_features = self.rbf(vectors.norm(dim=1))
        if self.chirality_embedding is not None:
            loops = vectors.shape[0] - chirality.shape[0]  # the self-loops have no twist: 0
            edge_features = edge_features + self.chirality_embedding(F.pad(chirality, (0, loops)))
        x = self.att_layers[0](x, edge_index, edge_features)
        x, edge_features = self.update(x, edge_features, edge_index, vectors, frame, edge_graph)
        for layer in self.att_layers[1:]:
            x = layer(x, edge_index, edge_features)
        if energy:
            return self.head(self.readout(x).squeeze(1), graph, geometry if derivatives else None, training=self.training)
        return {self.target: self.head(x, graph).squeeze(1)}


@register_model("icomformer", IComFormerOptions, small=IComFormerOptions(features=32, rbf_bins=32, fc_features=32, k=12))
class IComFormer(ComFormer):
    """iComFormer: invariant; the edge update attends to the lattice vectors through their lengths
    and their angles with each edge (4 node layers by default). See :class:`ComFormer`."""

    def __init__(self, options: IComFormerOptions = IComFormerOptions()):
        super().__init__(options)
        self.rbf_angle = CosineEmbedding(options.rbf_bins, options.features)
        self.edge_update_layer = EdgeLatticeUpdate(options.features, self.norm)
        self._add_chirality_embedding()

    def update(self, x, edge_features, edge_index, vectors, frame, edge_graph):
        lengths = self.rbf(frame.norm(dim=2))  # (B, 3, C)
        # the reference's edge vector points from the neighbour to the centre
        direction = -vectors
        cosines = torch.einsum("ed,ekd->ek", direction, frame[edge_graph])
        cosines = cosines / (direction.norm(dim=1, keepdim=True) * frame[edge_graph].norm(dim=2))
        angles = self.rbf_angle(cosines.clamp(-1, 1))  # (E, 3, C)
        return x, self.edge_update_layer(edge_features, lengths, angles, edge_graph)


@register_model("ecomformer", EComFormerOptions,
                small=EComFormerOptions(features=32, rbf_bins=32, fc_features=32, k=12, scalars=16, vectors=4))
class EComFormer(ComFormer):
    """eComFormer: equivariant tensor-product update with spherical harmonics l <= 2 of the edge
    vectors (3 node layers by default; ``scalars``/``vectors`` set its irreps
    ``scalars x 0e + vectors x 1o + vectors x 2e``). See :class:`ComFormer`."""

    def __init__(self, options: EComFormerOptions = EComFormerOptions()):
        super().__init__(options)
        o = options
        self.equi_update = EquivariantUpdate(o.features, o.features, o.scalars, o.vectors, self.norm)
        self._add_chirality_embedding()

    def update(self, x, edge_features, edge_index, vectors, frame, edge_graph):
        return self.equi_update(x, edge_index, edge_features, vectors), edge_features

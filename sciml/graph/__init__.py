"""The shared geometric graph layer: structures, neighbour search, batching and edge geometry."""

from sciml.graph.atomic_graph import AtomicGraph, batched_neighbor_list
from sciml.graph.crystal import crystal_translations, knn_neighbor_list, lattice_frame
from sciml.graph.geometry import EdgeGeometry, apply_strain, edge_geometry, forces_and_stress, stress_from_virial
from sciml.graph.message_passing import MessagePassing, edge_counts
from sciml.graph.neighbors import neighbor_list
from sciml.graph.radial import BesselBasis, CosineEnvelope, GaussianBasis, PolynomialEnvelope
from sciml.graph.spec import GraphSpec

__all__ = [
    "AtomicGraph",
    "batched_neighbor_list",
    "neighbor_list",
    "knn_neighbor_list",
    "lattice_frame",
    "crystal_translations",
    "GraphSpec",
    "EdgeGeometry",
    "edge_geometry",
    "apply_strain",
    "forces_and_stress",
    "stress_from_virial",
    "MessagePassing",
    "edge_counts",
    "GaussianBasis",
    "BesselBasis",
    "PolynomialEnvelope",
    "CosineEnvelope",
]

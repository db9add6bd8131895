"""The base class of every sciml graph model: graph settings, edge geometry and aggregation."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from sciml.graph.atomic_graph import AtomicGraph
from sciml.graph.geometry import EdgeGeometry, edge_geometry
from sciml.graph.neighbors import check_max_neighbors_rule
from sciml.graph.spec import GraphSpec
from sciml.ops.scatter import scatter
from sciml.ops.tracing import is_tracing


class MessagePassing(nn.Module):
    """Base of graph models and their layers.

    A model records the graph it was built for (``cutoff`` in Å, ``max_neighbors`` and
    ``max_neighbors_rule`` for a radius graph; ``knn`` and ``lattice_frame`` for ComFormer's crystal graph, where ``cutoff`` is
    the first search radius), exposed as :attr:`graph_spec`, so that calculators,
    ``sciml.predict`` and the CLI build matching graphs; models themselves never build graphs.
    Subclasses call :meth:`geometry` for differentiable edge vectors and :meth:`aggregate` to
    reduce edge messages onto their centre atoms.
    """

    def __init__(self, cutoff: Optional[float] = None, max_neighbors: Optional[int] = None,
                 knn: Optional[int] = None, lattice_frame: bool = False, max_neighbors_rule: str = "ties"):
        super().__init__()
        self.cutoff = None if cutoff is None else float(cutoff)
        self.max_neighbors = max_neighbors
        self.max_neighbors_rule = check_max_neighbors_rule(max_neighbors_rule)
        self.knn = knn
        self.uses_lattice_frame = bool(lattice_frame)

    @property
    def graph_spec(self) -> Optional[GraphSpec]:
        """The graph this model reads, or None when it has no fixed one (no cutoff, no k)."""
        if self.cutoff is None and self.knn is None:
            return None
        return GraphSpec(cutoff=self.cutoff, max_neighbors=self.max_neighbors,
                         max_neighbors_rule=self.max_neighbors_rule, knn=self.knn,
                         lattice_frame=self.uses_lattice_frame)

    def check_graph(self, graph: AtomicGraph) -> None:
        """Raise ValueError when ``graph`` was not built for this model's cutoff, or its edges were
        never built for a multi-atom structure (isolated atoms of a built graph are fine), or it
        holds elements the model has no parameters for (:meth:`check_elements`; not while traced,
        where no values exist)."""
        self._check_edges(graph)
        if not is_tracing():
            self.check_elements(graph)

    def _check_edges(self, graph: AtomicGraph) -> None:
        if self.knn is not None:
            if graph.knn != self.knn:
                raise ValueError(f"the model reads a graph of {self.graph_spec.describe()}, but the graph was built "
                                 f"{'with k=' + str(graph.knn) if graph.knn else 'as a radius graph'}; rebuild it with "
                                 f"graph.with_graph(model.graph_spec)")
            if self.uses_lattice_frame and graph.lattice_frame is None:
                raise ValueError("the model needs lattice frames; rebuild the graph with graph.with_graph(model.graph_spec)")
            return
        # graph.cutoff first: a built graph (the exported case) never reaches the value check.
        if graph.cutoff is None and graph.num_edges == 0 and bool((graph.num_atoms_per_graph > 1).any()):
            raise ValueError(f"graph has no edges; build it with cutoff={self.cutoff} (graph.with_edges)")
        if self.cutoff is not None and graph.cutoff is not None and graph.cutoff + 1e-9 < self.cutoff:
            raise ValueError(
                f"graph was built with cutoff {graph.cutoff} Å but the model needs {self.cutoff} Å; "
                f"rebuild it with graph.with_edges({self.cutoff})"
            )

    def check_elements(self, graph: AtomicGraph) -> None:
        """Raise ValueError for atomic numbers the model has no parameters for (models override it)."""

    @staticmethod
    def geometry(graph: AtomicGraph, forces: bool = False, stress: bool = False) -> EdgeGeometry:
        """Edge vectors (E, 3) Å and lengths (E,) Å, differentiable for forces and stress."""
        return edge_geometry(graph, forces=forces, stress=stress)

    @staticmethod
    def aggregate(messages: torch.Tensor, centres: torch.Tensor, num_nodes: int, reduce: str = "sum") -> torch.Tensor:
        """Reduce edge messages (E, ...) onto their centre atoms: (num_nodes, ...)."""
        return scatter(messages, centres, num_nodes, reduce)


def edge_counts(centres: torch.Tensor, num_nodes: int, dtype: torch.dtype) -> torch.Tensor:
    """(num_nodes,) number of edges at each centre atom, as ``dtype``. A scatter of ones rather
    than ``bincount``, whose output size depends on the values and so cannot be traced."""
    ones = torch.ones(centres.shape[0], dtype=dtype, device=centres.device)
    return scatter(ones, centres, num_nodes, "sum")

"""``GraphSpec``: how a model's graph is built from a structure.

Every graph model declares one (``model.graph_spec``), and the code that turns structures into
graphs (readers, trainer, calculator, ``sciml predict``) builds exactly that graph, so a model is
never fed a graph it was not trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sciml.graph.neighbors import check_max_neighbors_rule


@dataclass(frozen=True)
class GraphSpec:
    """A radius graph, or ComFormer's k-nearest-neighbour crystal graph.

    Attributes:
        cutoff: Å. Radius graphs: the pair cutoff. k-NN graphs: the first search radius.
        max_neighbors: radius graphs only: keep each atom's nearest ``max_neighbors``.
        max_neighbors_rule: how the cap treats ties (:func:`sciml.graph.neighbors.neighbor_list`):
            "ties" (default: every neighbour within 0.01 Å of the last one kept, so the graph
            depends on the geometry only), "strict" (exactly ``max_neighbors``, fairchem's
            default) or "fairchem" (fairchem's ``enforce_max_neighbors_strictly=False``).
        knn: if set, the graph is each atom's ``knn`` nearest neighbours with ties, made
            undirected (:func:`sciml.graph.crystal.knn_neighbor_list`).
        lattice_frame: also give every structure its lattice frame
            (:func:`sciml.graph.crystal.lattice_frame`); needs 3D-periodic structures.
        tolerance: Å, for k-NN ties and for the frame (translations, length and angle ties).
    """

    cutoff: Optional[float] = None
    max_neighbors: Optional[int] = None
    max_neighbors_rule: str = "ties"
    knn: Optional[int] = None
    lattice_frame: bool = False
    tolerance: float = 1e-3

    def __post_init__(self):
        if self.knn is None and self.lattice_frame:
            raise ValueError("lattice_frame needs a k-NN graph (set knn)")
        if self.knn is not None and self.max_neighbors is not None:
            raise ValueError("max_neighbors applies to radius graphs; a k-NN graph has knn only")
        if self.knn is None and self.cutoff is None:
            raise ValueError("a graph needs a cutoff (radius graph) or knn (k-NN graph)")
        if self.knn is not None and self.knn < 1:
            raise ValueError(f"knn must be a positive integer, got {self.knn}")
        check_max_neighbors_rule(self.max_neighbors_rule)

    @staticmethod
    def of(model) -> "GraphSpec":
        """The spec a graph model declares (``model.graph_spec``); ValueError for a model without
        one (e.g. built with ``cutoff=None``: the caller builds its graphs)."""
        spec = model.graph_spec
        if spec is None:
            raise ValueError(f"{type(model).__name__} declares no graph (no cutoff or k); build its graphs "
                             f"yourself, e.g. AtomicGraph.from_tensors(..., cutoff=...)")
        return spec

    def describe(self) -> str:
        if self.knn is not None:
            return f"{self.knn} nearest neighbours with ties" + (" and lattice frames" if self.lattice_frame else "")
        capped = f", {self.max_neighbors} nearest neighbours ({self.max_neighbors_rule} rule)" if self.max_neighbors else ""
        return f"radius {self.cutoff} Å{capped}"

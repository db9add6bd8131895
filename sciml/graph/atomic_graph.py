"""``AtomicGraph``: a batch of atomic structures with their neighbour graph and targets."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from torch.utils import _pytree as pytree

from sciml.graph.crystal import knn_neighbor_list, lattice_frame
from sciml.graph.neighbors import neighbor_list
from sciml.graph.spec import GraphSpec
from sciml.graph.validation import (
    as_tensor,
    atomic_numbers_from_symbols,
    check_atomic_numbers,
    check_cutoff,
    check_finite,
)

@dataclass
class AtomicGraph:
    """A batch of B structures with N atoms in total and E directed edges.

    Attributes:
        positions: (N, 3) float, Å.
        atomic_numbers: (N,) int64.
        cell: (B, 3, 3) float, Å, lattice vectors as rows (zeros for molecules).
        pbc: (B, 3) bool, periodic directions.
        batch: (N,) int64, structure index of each atom.
        ptr: (B + 1,) int64, atoms of structure b are ``ptr[b]:ptr[b+1]``.
        edge_index: (2, E) int64, rows ``(i, j)``: centre i, neighbour j (ase's convention); edge
            vectors point from i to j: ``positions[j] - positions[i] + cell_shifts @ cell``.
        cell_shifts: (E, 3) int64, integer image shift of the neighbour.
        cutoff: float or None, Å, the radius the edges were built with (None for k-NN graphs).
        knn: int or None, k of a k-nearest-neighbour graph (see :class:`GraphSpec`).
        lattice_frame: (B, 3, 3) float or None, each structure's lattice frame (rows, see
            :func:`sciml.graph.crystal.lattice_frame`) in fractional coordinates of its cell, so
            that ``lattice_frame[b] @ cell[b]`` is the frame in Å, also under a strained cell.
        energy: (B,) eV, optional target. forces: (N, 3) eV/Å, optional target.
        stress: (B, 3, 3) eV/Å^3, optional target (ase sign convention).
        properties: named per-structure targets, each (B, ...).
        atom_properties: named per-atom targets, each (N, ...).
    """

    positions: torch.Tensor
    atomic_numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    edge_index: torch.Tensor
    cell_shifts: torch.Tensor
    cutoff: Optional[float] = None
    knn: Optional[int] = None
    lattice_frame: Optional[torch.Tensor] = None
    energy: Optional[torch.Tensor] = None
    forces: Optional[torch.Tensor] = None
    stress: Optional[torch.Tensor] = None
    properties: Dict[str, torch.Tensor] = field(default_factory=dict)
    atom_properties: Dict[str, torch.Tensor] = field(default_factory=dict)

    # ----------------------------------------------------------------------------- sizes
    @property
    def num_graphs(self) -> int:
        return self.ptr.shape[0] - 1

    # Sizes are read from shapes without int(): under torch.export they are symbolic and int()
    # would fix them to the example's size.
    @property
    def num_nodes(self) -> int:
        return self.positions.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def num_atoms_per_graph(self) -> torch.Tensor:
        """(B,) int64 atom counts."""
        return self.ptr[1:] - self.ptr[:-1]

    @property
    def device(self) -> torch.device:
        return self.positions.device

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_tensors(
        cls,
        positions,
        atomic_numbers,
        cell=None,
        pbc=False,
        cutoff: "float | GraphSpec | None" = None,
        max_neighbors: Optional[int] = None,
        dtype: Optional[torch.dtype] = None,
        energy: Optional[float] = None,
        forces=None,
        stress=None,
        properties: Optional[Dict[str, object]] = None,
        atom_properties: Optional[Dict[str, object]] = None,
    ) -> "AtomicGraph":
        """One structure from arrays; builds edges when ``cutoff`` is given.

        ``cutoff`` is a pair cutoff in Å (with optional ``max_neighbors``), or a
        :class:`GraphSpec` for any kind of graph (e.g. a model's ``graph_spec``).

        positions (N, 3) Å; atomic_numbers (N,); cell (3, 3) Å or None; pbc bool or (3,);
        energy eV; forces (N, 3) eV/Å; stress (3, 3) or Voigt (6,) eV/Å^3.
        """
        dtype = dtype or torch.get_default_dtype()
        pos = as_tensor(positions, "positions").to(dtype)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3), got {tuple(pos.shape)}")
        if pos.shape[0] == 0:
            raise ValueError("structure has no atoms")
        check_finite(pos, "positions")
        numbers = as_tensor(atomic_numbers, "atomic_numbers").to(torch.int64).reshape(-1)
        if numbers.shape[0] != pos.shape[0]:
            raise ValueError(
                f"atomic_numbers has {numbers.shape[0]} entries but positions has {pos.shape[0]} atoms"
            )
        check_atomic_numbers(numbers)
        cell_t = torch.zeros(3, 3, dtype=dtype) if cell is None else as_tensor(cell, "cell").to(dtype)
        if cell_t.shape != (3, 3):
            raise ValueError(f"cell must have shape (3, 3), got {tuple(cell_t.shape)}")
        check_finite(cell_t, "cell")
        pbc_t = torch.as_tensor(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy())
        n = pos.shape[0]
        graph = cls(
            positions=pos,
            atomic_numbers=numbers,
            cell=cell_t.unsqueeze(0),
            pbc=pbc_t.unsqueeze(0),
            batch=torch.zeros(n, dtype=torch.int64),
            ptr=torch.tensor([0, n], dtype=torch.int64),
            edge_index=torch.zeros(2, 0, dtype=torch.int64),
            cell_shifts=torch.zeros(0, 3, dtype=torch.int64),
            energy=None if energy is None else torch.tensor([float(energy)], dtype=dtype),
            forces=None if forces is None else _checked_shape(forces, (n, 3), "forces", dtype),
            stress=None if stress is None else _stress_matrix(stress, dtype).unsqueeze(0),
            properties={k: _as_graph_value(v, dtype) for k, v in (properties or {}).items()},
            atom_properties={
                k: _checked_leading(v, n, f"atom property {k!r}", dtype) for k, v in (atom_properties or {}).items()
            },
        )
        if isinstance(cutoff, GraphSpec):
            if max_neighbors is not None:
                raise ValueError("give max_neighbors inside the GraphSpec, not next to it")
            return graph.with_graph(cutoff)
        return graph.with_edges(cutoff, max_neighbors) if cutoff is not None else graph

    @classmethod
    def from_ase(
        cls,
        atoms,
        cutoff: "float | GraphSpec | None" = None,
        max_neighbors: Optional[int] = None,
        dtype: Optional[torch.dtype] = None,
        energy_key: str = "energy",
        forces_key: str = "forces",
        stress_key: str = "stress",
        property_keys: Sequence[str] = (),
    ) -> "AtomicGraph":
        """From one ``ase.Atoms`` or a list of them (collated into a batch).

        Targets are read from the attached calculator's results (a ``SinglePointCalculator`` from
        an extxyz file) or from ``atoms.info`` / ``atoms.arrays`` under the given keys.
        ``property_keys`` name extra targets: per-structure ones in ``info``, per-atom in ``arrays``.
        """
        if not hasattr(atoms, "get_positions"):
            return cls.collate(
                [cls.from_ase(a, cutoff, max_neighbors, dtype, energy_key, forces_key, stress_key, property_keys) for a in atoms]
            )
        results = dict(atoms.calc.results) if atoms.calc is not None else {}

        def lookup(key):
            for source in (results, atoms.info, atoms.arrays):
                if key in source:
                    return source[key]
            return None

        properties, atom_properties = {}, {}
        for key in property_keys:
            if key in atoms.arrays or (key in results and np.ndim(results[key]) >= 1 and len(results[key]) == len(atoms)):
                atom_properties[key] = lookup(key)
            elif lookup(key) is not None:
                properties[key] = lookup(key)
            else:
                raise ValueError(f"property {key!r} not found in structure {atoms.get_chemical_formula()}")
        return cls.from_tensors(
            atoms.get_positions(),
            atoms.get_atomic_numbers(),
            cell=atoms.cell.array,
            pbc=atoms.pbc,
            cutoff=cutoff,
            max_neighbors=max_neighbors,
            dtype=dtype,
            energy=lookup(energy_key),
            forces=lookup(forces_key),
            stress=lookup(stress_key),
            properties=properties,
            atom_properties=atom_properties,
        )

    @classmethod
    def from_pymatgen(
        cls,
        structure,
        cutoff: "float | GraphSpec | None" = None,
        max_neighbors: Optional[int] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> "AtomicGraph":
        """From a pymatgen ``Structure`` (periodic) or ``Molecule``, or a list of them."""
        if isinstance(structure, (list, tuple)):
            return cls.collate([cls.from_pymatgen(s, cutoff, max_neighbors, dtype) for s in structure])
        if not structure.is_ordered:
            raise ValueError(f"structure {structure.formula} is disordered (partial occupancies); order it first")
        numbers = atomic_numbers_from_symbols([site.specie.symbol for site in structure])
        lattice = getattr(structure, "lattice", None)
        cell = None if lattice is None else lattice.matrix
        pbc = (False, False, False) if lattice is None else tuple(bool(p) for p in lattice.pbc)
        return cls.from_tensors(structure.cart_coords, numbers, cell, pbc, cutoff, max_neighbors, dtype)

    @classmethod
    def from_symbols(cls, symbols: Iterable[str], positions, **kwargs) -> "AtomicGraph":
        """From chemical symbols and positions; unknown symbols raise ValueError."""
        return cls.from_tensors(positions, atomic_numbers_from_symbols(symbols), **kwargs)

    def with_edges(self, cutoff: float, max_neighbors: Optional[int] = None,
                   max_neighbors_rule: str = "ties") -> "AtomicGraph":
        """A copy whose edges are all pairs within ``cutoff`` Å, capped at each atom's nearest
        ``max_neighbors`` by ``max_neighbors_rule`` (see :func:`sciml.graph.neighbor_list`)."""
        edge_index, shifts = batched_neighbor_list(self, cutoff, max_neighbors, max_neighbors_rule)
        return replace(self, edge_index=edge_index, cell_shifts=shifts, cutoff=check_cutoff(cutoff), knn=None,
                       lattice_frame=None)

    def with_graph(self, spec: GraphSpec) -> "AtomicGraph":
        """A copy with the graph ``spec`` describes: radius edges, or k-NN edges with ties and,
        if asked, lattice frames (see :mod:`sciml.graph.crystal`)."""
        if spec.knn is None:
            return self.with_edges(spec.cutoff, spec.max_neighbors, spec.max_neighbors_rule)
        rows, shifts, frames = [], [], []
        for b in range(self.num_graphs):
            lo, hi = int(self.ptr[b]), int(self.ptr[b + 1])
            pos, cell, pbc = self.positions[lo:hi].detach(), self.cell[b].detach(), self.pbc[b]
            start = spec.cutoff if spec.cutoff is not None else 4.0
            i, j, s = knn_neighbor_list(pos, cell, pbc, spec.knn, start, spec.tolerance)
            rows.append(torch.stack([i, j]) + lo)
            shifts.append(s)
            if spec.lattice_frame:
                if not bool(pbc.all()):
                    raise ValueError(f"structure {b} is not periodic in all three directions (pbc={pbc.tolist()}); "
                                     f"a lattice frame needs a 3D crystal")
                frame = lattice_frame(pos, self.atomic_numbers[lo:hi], cell, torch.stack([i, j]), s, spec.tolerance)
                cell64 = cell.cpu().to(torch.float64)
                frames.append(torch.as_tensor(frame) @ torch.linalg.inv(cell64))
        return replace(
            self,
            edge_index=torch.cat(rows, dim=1).to(self.device),
            cell_shifts=torch.cat(shifts).to(self.device),
            cutoff=None,
            knn=spec.knn,
            lattice_frame=torch.stack(frames).to(self.device, self.positions.dtype) if frames else None,
        )

    def require_neighbors(self, where: str = "structure") -> None:
        """Raise ValueError if an atom of a multi-atom structure has no neighbour within the cutoff.

        Such an atom sees nothing: a model can only return its element's reference energy, which
        for training or prediction input almost always means a wrong cutoff or broken geometry.
        """
        if self.cutoff is None and self.knn is None:
            raise ValueError(f"{where}: edges were never built; build the graph with a cutoff")
        has_edge = torch.zeros(self.num_nodes, dtype=torch.bool, device=self.device)
        has_edge[self.edge_index[0]] = True
        lonely = ~has_edge & (self.num_atoms_per_graph[self.batch] > 1)
        if bool(lonely.any()):
            atoms = lonely.nonzero().reshape(-1)
            shown = ", ".join(str(int(a)) for a in atoms[:5]) + (", ..." if atoms.numel() > 5 else "")
            raise ValueError(f"{where}: atoms {shown} have no neighbour within the cutoff of {self.cutoff} Å")

    # ----------------------------------------------------------------------------- batching
    @classmethod
    def collate(cls, graphs: Sequence["AtomicGraph"]) -> "AtomicGraph":
        """Concatenate graphs into one batch (node indices of edges are offset)."""
        if len(graphs) == 0:
            raise ValueError("cannot collate an empty list of structures")
        if len(graphs) == 1:
            return graphs[0]
        counts = torch.tensor([g.num_nodes for g in graphs])
        node_offset = torch.cumsum(counts, 0) - counts
        graph_offset = torch.cumsum(torch.tensor([g.num_graphs for g in graphs]), 0)
        cutoffs = {g.cutoff for g in graphs}
        knns = {g.knn for g in graphs}
        frames = [g.lattice_frame for g in graphs]
        if any(f is None for f in frames) and any(f is not None for f in frames):
            raise ValueError("cannot collate: some structures have lattice frames and others do not")
        batch = torch.cat(
            [g.batch + (graph_offset[k - 1] if k else 0) for k, g in enumerate(graphs)]
        )
        out = dict(
            positions=torch.cat([g.positions for g in graphs]),
            atomic_numbers=torch.cat([g.atomic_numbers for g in graphs]),
            cell=torch.cat([g.cell for g in graphs]),
            pbc=torch.cat([g.pbc for g in graphs]),
            batch=batch,
            ptr=torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(torch.bincount(batch, minlength=int(graph_offset[-1])), 0)]),
            edge_index=torch.cat([g.edge_index + node_offset[k] for k, g in enumerate(graphs)], dim=1),
            cell_shifts=torch.cat([g.cell_shifts for g in graphs]),
            cutoff=cutoffs.pop() if len(cutoffs) == 1 else None,
            knn=knns.pop() if len(knns) == 1 else None,
            lattice_frame=None if frames[0] is None else torch.cat(frames),
        )
        for name in ("energy", "forces", "stress"):
            values = [getattr(g, name) for g in graphs]
            present = [v is not None for v in values]
            if any(present) and not all(present):
                raise ValueError(f"cannot collate: some structures have {name} and others do not")
            out[name] = torch.cat(values) if all(present) else None
        for attr in ("properties", "atom_properties"):
            keys = set(getattr(graphs[0], attr))
            if any(set(getattr(g, attr)) != keys for g in graphs):
                raise ValueError(f"cannot collate: structures carry different {attr.replace('_', ' ')}")
            out[attr] = {k: torch.cat([getattr(g, attr)[k] for g in graphs]) for k in sorted(keys)}
        return cls(**out)

    def split(self) -> List["AtomicGraph"]:
        """The inverse of :meth:`collate`: one graph per structure."""
        result = []
        edge_graph = self.batch[self.edge_index[0]] if self.num_edges else torch.zeros(0, dtype=torch.int64)
        for b in range(self.num_graphs):
            lo, hi = int(self.ptr[b]), int(self.ptr[b + 1])
            edges = (edge_graph == b).nonzero().reshape(-1)
            result.append(
                AtomicGraph(
                    positions=self.positions[lo:hi],
                    atomic_numbers=self.atomic_numbers[lo:hi],
                    cell=self.cell[b:b + 1],
                    pbc=self.pbc[b:b + 1],
                    batch=torch.zeros(hi - lo, dtype=torch.int64, device=self.device),
                    ptr=torch.tensor([0, hi - lo], dtype=torch.int64, device=self.device),
                    edge_index=self.edge_index[:, edges] - lo,
                    cell_shifts=self.cell_shifts[edges],
                    cutoff=self.cutoff,
                    knn=self.knn,
                    lattice_frame=None if self.lattice_frame is None else self.lattice_frame[b:b + 1],
                    energy=None if self.energy is None else self.energy[b:b + 1],
                    forces=None if self.forces is None else self.forces[lo:hi],
                    stress=None if self.stress is None else self.stress[b:b + 1],
                    properties={k: v[b:b + 1] for k, v in self.properties.items()},
                    atom_properties={k: v[lo:hi] for k, v in self.atom_properties.items()},
                )
            )
        return result

    def to_ase(self) -> list:
        """One ``ase.Atoms`` per structure, with targets attached as a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        out = []
        for g in self.split():
            atoms = Atoms(
                numbers=g.atomic_numbers.cpu().numpy(),
                positions=g.positions.detach().cpu().double().numpy(),
                cell=g.cell[0].detach().cpu().double().numpy(),
                pbc=g.pbc[0].cpu().numpy(),
            )
            results = {}
            if g.energy is not None:
                results["energy"] = float(g.energy[0])
            if g.forces is not None:
                results["forces"] = g.forces.detach().cpu().double().numpy()
            if g.stress is not None:
                results["stress"] = g.stress[0].detach().cpu().double().numpy()
            if results:
                atoms.calc = SinglePointCalculator(atoms, **results)
            out.append(atoms)
        return out

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "AtomicGraph":
        """Move tensors to ``device``; floating tensors are also cast to ``dtype`` when given."""

        def move(t):
            if t is None:
                return None
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        changes = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) or value is None:
                changes[f.name] = move(value)
            elif isinstance(value, dict):
                changes[f.name] = {k: move(v) for k, v in value.items()}
        return replace(self, **changes)


#: The axes of AtomicGraph's tensors that count atoms or edges (the dynamic sizes of an exported model).
GRAPH_DYNAMIC_AXES = {"positions": {0: "atoms"}, "atomic_numbers": {0: "atoms"}, "batch": {0: "atoms"},
                      "forces": {0: "atoms"}, "edge_index": {1: "edges"}, "cell_shifts": {0: "edges"}}

# AtomicGraph is a pytree whose leaves are its tensors (cutoff and knn are static context), so a
# graph can be passed to torch.export, torch.compile and torch.func functions as it is.
_GRAPH_STATIC = ("cutoff", "knn")
_GRAPH_CHILDREN = tuple(f.name for f in fields(AtomicGraph) if f.name not in _GRAPH_STATIC)


def _graph_flatten(graph: AtomicGraph):
    return [getattr(graph, name) for name in _GRAPH_CHILDREN], (graph.cutoff, graph.knn)


def _graph_flatten_with_keys(graph: AtomicGraph):
    values, context = _graph_flatten(graph)
    return [(pytree.GetAttrKey(name), value) for name, value in zip(_GRAPH_CHILDREN, values)], context


def _graph_unflatten(values, context) -> AtomicGraph:
    return AtomicGraph(**dict(zip(_GRAPH_CHILDREN, values)), **dict(zip(_GRAPH_STATIC, context)))


pytree.register_pytree_node(
    AtomicGraph,
    _graph_flatten,
    _graph_unflatten,
    serialized_type_name="sciml.graph.AtomicGraph",
    flatten_with_keys_fn=_graph_flatten_with_keys,
)


def batched_neighbor_list(
    graph: AtomicGraph, cutoff: float, max_neighbors: Optional[int] = None, max_neighbors_rule: str = "ties"
) -> "tuple[torch.Tensor, torch.Tensor]":
    """Neighbour lists of every structure of a batch (``cutoff`` Å; ``max_neighbors`` and
    ``max_neighbors_rule`` as in :func:`sciml.graph.neighbor_list`).

    Returns ``edge_index`` (2, E) with batch-global atom indices (row 0 the centre i, row 1 the
    neighbour j) and ``cell_shifts`` (E, 3) int64, on the graph's device.
    """
    rows, shifts = [], []
    for b in range(graph.num_graphs):
        lo, hi = int(graph.ptr[b]), int(graph.ptr[b + 1])
        i, j, s = neighbor_list(
            graph.positions[lo:hi].detach(), graph.cell[b].detach(), graph.pbc[b], cutoff, max_neighbors,
            max_neighbors_rule,
        )
        rows.append(torch.stack([i, j]) + lo)
        shifts.append(s)
    return torch.cat(rows, dim=1).to(graph.device), torch.cat(shifts).to(graph.device)


def _checked_shape(value, shape, name: str, dtype) -> torch.Tensor:
    t = as_tensor(value, name).to(dtype)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t


def _checked_leading(value, n: int, name: str, dtype) -> torch.Tensor:
    t = as_tensor(value, name)
    t = t.to(dtype) if t.is_floating_point() else t
    if t.ndim == 0 or t.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows (one per atom), got shape {tuple(t.shape)}")
    return t


def _as_graph_value(value, dtype) -> torch.Tensor:
    t = as_tensor(value, "property")
    t = t.to(dtype) if t.is_floating_point() else t
    return t.reshape(1, *t.shape)


def _stress_matrix(value, dtype) -> torch.Tensor:
    """Accept a (3, 3) stress or ase's Voigt order (xx, yy, zz, yz, xz, xy); returns (3, 3)."""
    t = as_tensor(value, "stress").to(dtype)
    if t.shape == (6,):
        xx, yy, zz, yz, xz, xy = t
        return torch.stack([torch.stack([xx, xy, xz]), torch.stack([xy, yy, yz]), torch.stack([xz, yz, zz])])
    if t.shape != (3, 3):
        raise ValueError(f"stress must have shape (3, 3) or Voigt (6,), got {tuple(t.shape)}")
    return t

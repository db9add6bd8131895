"""The record: one OC20 structure as a dict of numpy arrays, and its conversion to a graph.

Every OC20 reader (S2EF extxyz, ASE database, legacy fairchem LMDB) yields records, the sciml
cache stores them field by field, and :func:`graph_from_record` turns one into an
:class:`~sciml.graph.atomic_graph.AtomicGraph`. Fields (N atoms; arrays keep the dtype of their
source, e.g. float32 from LMDBs, float64 from extxyz):

========================  ===========  ==========================================================
field                     shape        meaning
========================  ===========  ==========================================================
``positions``             (N, 3)       Cartesian positions, Å (required)
``atomic_numbers``        (N,)         int64 (required)
``cell``                  (3, 3)       lattice vectors as rows, Å (required)
``pbc``                   (3,)         bool periodic directions (OC20 slabs: all True)
``tags``                  (N,)         int64: 0 subsurface, 1 surface, 2 adsorbate
``fixed``                 (N,)         bool: True for atoms held fixed in the DFT relaxation
``energy``                ()           eV, the S2EF target: the adsorption energy (total minus
                                       ``reference_energy``) when referenced, else the total
``forces``                (N, 3)       eV/Å, DFT forces on every atom (fixed ones included)
``total_energy``          ()           eV, the DFT total energy (when the source has it)
``reference_energy``      ()           eV, slab + gas-phase reference (S2EF ``*.txt`` column 3)
``sid``, ``fid``          ()           int64 system id (``random<sid>``) and frame id
``initial_energy``        ()           eV, IS2RE ``y_init``: energy of the initial structure
``relaxed_energy``        ()           eV, IS2RE ``y_relaxed``: the IS2RE target
``relaxed_positions``     (N, 3)       Å, IS2RS ``pos_relaxed``
========================  ===========  ==========================================================

A graph carries ``energy``/``forces`` as its labels, ``tags`` and ``fixed`` (and
``relaxed_positions``) as ``atom_properties`` and every other scalar as a per-structure
``property``.
"""

from __future__ import annotations

from typing import Dict, Optional

import ase
import numpy as np
import torch
from ase.constraints import FixAtoms

from sciml.graph.atomic_graph import AtomicGraph
from sciml.graph.spec import GraphSpec
from sciml.graph.validation import MAX_ATOMIC_NUMBER, check_atomic_numbers, check_finite

Record = Dict[str, np.ndarray]

#: field name -> "atom" (leading dimension N) or "structure" (one value per structure).
FIELDS: Dict[str, str] = {
    "positions": "atom",
    "atomic_numbers": "atom",
    "cell": "structure",
    "pbc": "structure",
    "tags": "atom",
    "fixed": "atom",
    "energy": "structure",
    "forces": "atom",
    "total_energy": "structure",
    "reference_energy": "structure",
    "sid": "structure",
    "fid": "structure",
    "initial_energy": "structure",
    "relaxed_energy": "structure",
    "relaxed_positions": "atom",
}
REQUIRED = ("positions", "atomic_numbers", "cell")
_ATOM_PROPERTIES = ("tags", "fixed", "relaxed_positions")
_LABELS = ("positions", "atomic_numbers", "cell", "pbc", "energy", "forces")


def atoms_record(atoms: ase.Atoms) -> Record:
    """The structure fields of an ``ase.Atoms``: positions, atomic_numbers, cell, pbc, tags, and
    ``fixed`` from its ``FixAtoms`` constraints (other constraint types are ignored)."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed[constraint.index] = True
    return {
        "positions": atoms.positions.copy(),
        "atomic_numbers": atoms.numbers.astype(np.int64),
        "cell": atoms.cell.array.copy(),
        "pbc": atoms.pbc.copy(),
        "tags": atoms.get_tags().astype(np.int64),
        "fixed": fixed,
    }


def check_record(record: Record, where: str) -> Record:
    """Validate a record in place of use; every problem is a ValueError that starts with ``where``.

    Checks the required fields, that every field is known, that per-atom fields have N rows
    (vectors of 3 columns where they are positions or forces), that atomic numbers lie in 1..118
    and that floating fields are finite. Returns the record.
    """
    missing = [name for name in REQUIRED if name not in record]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)} (fields present: {', '.join(sorted(record))})")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    n = record["positions"].shape[0] if record["positions"].ndim == 2 else -1
    if n < 1 or record["positions"].shape != (n, 3):
        raise ValueError(f"{where}: positions must have shape (N, 3) with N >= 1, got {record['positions'].shape}")
    for name, value in record.items():
        if FIELDS[name] == "atom":
            expected = (n, 3) if name in ("positions", "forces", "relaxed_positions") else (n,)
        else:
            expected = {"cell": (3, 3), "pbc": (3,)}.get(name, ())
        if value.shape != expected:
            raise ValueError(f"{where}: {name} must have shape {expected}, got {value.shape}")
    # numpy checks first (cheap on every record); the shared helpers word the error
    numbers = record["atomic_numbers"]
    try:
        if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER:
            check_atomic_numbers(torch.from_numpy(numbers.astype(np.int64)))
        for name, value in record.items():
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                check_finite(torch.from_numpy(np.atleast_1d(value)), name)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return record


def graph_from_record(
    record: Record,
    cutoff: "float | GraphSpec | None" = None,
    max_neighbors: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
) -> AtomicGraph:
    """One :class:`AtomicGraph` from a record (see the module docstring for where fields go).

    Edges are built within ``cutoff`` Å (at most ``max_neighbors`` per atom, nearest first), or
    as a :class:`~sciml.graph.GraphSpec` says (a model's ``graph_spec``, with its rule for ties at
    the cap), when ``cutoff`` is given; otherwise the graph has no edges and the caller builds them with
    :meth:`AtomicGraph.with_edges`. Floating fields are cast to ``dtype`` (default: torch's).
    """
    atom_properties = {name: torch.from_numpy(np.array(record[name])) for name in _ATOM_PROPERTIES if name in record}
    properties = {
        name: torch.from_numpy(np.array(value))
        for name, value in record.items()
        if name not in _LABELS and name not in _ATOM_PROPERTIES
    }
    energy = record.get("energy")
    return AtomicGraph.from_tensors(
        torch.from_numpy(np.array(record["positions"])),
        torch.from_numpy(np.array(record["atomic_numbers"], dtype=np.int64)),
        cell=torch.from_numpy(np.array(record["cell"])),
        pbc=record.get("pbc", np.ones(3, dtype=bool)),
        cutoff=cutoff,
        max_neighbors=max_neighbors,
        dtype=dtype,
        energy=None if energy is None else float(energy),
        forces=None if "forces" not in record else torch.from_numpy(np.array(record["forces"])),
        properties=properties,
        atom_properties=atom_properties,
    )

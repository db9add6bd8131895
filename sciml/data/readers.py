"""Reading labelled structures from any ase-readable file and turning them into graphs.

Every failure is a one-line ``ValueError`` that names the file and, where it applies, the frame
(0-based), so a user can fix the data without a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import ase
import numpy as np
import torch
from tqdm.auto import tqdm

from sciml.data.formats import DEFAULT_FORMAT, STRUCTURES, DataFormat, register_format
from sciml.graph import AtomicGraph, GraphSpec

LABELS = ("energy", "forces", "stress")
_PROGRESS_THRESHOLD = 1000


def read_structures(
    path: Union[str, os.PathLike],
    index: Union[str, int] = ":",
    energy_key: Optional[str] = "energy",
    forces_key: Optional[str] = "forces",
    stress_key: Optional[str] = "stress",
    property_keys: Sequence[str] = (),
    required: Sequence[str] = (),
    format: Optional[str] = None,
    species: Optional[Sequence[str]] = None,
) -> List[ase.Atoms]:
    """Read structures (extxyz/xyz, CIF, POSCAR, ase db, anything ase reads) and check them.

    The file is read by :func:`sciml.data.structure_files.read_structure_file`, the one reader
    of every command: the reader is chosen from the name (case-insensitive, ``.gz`` looked
    through); CIFs give every block, checked site by site (partial or mixed occupancy, implicit
    hydrogens and overlapping sites are refused); POSCARs without a species line need ``species``.

    Labels are looked up, as :meth:`AtomicGraph.from_ase` does, in the attached calculator's
    results, then ``atoms.info`` (per structure), then ``atoms.arrays`` (per atom). Units are
    those of the file: ase convention is energy eV, forces eV/Å, stress eV/Å^3.

    Args:
        path: the file.
        index: which frames, in ase syntax (``":"`` all, ``"0:100"``, ``-1``).
        energy_key, forces_key, stress_key: where the labels are stored; None ignores that label.
        property_keys: extra labels that every frame must carry.
        required: which of ``"energy"``, ``"forces"``, ``"stress"`` every frame must carry. A label
            not required may be absent, but then from every frame (a batch cannot mix them).
        format: ase format name when it cannot be guessed from the file name.
        species: elements, in order, of a POSCAR without a species line (VASP 4 format).

    Returns:
        One ``ase.Atoms`` per frame.

    Raises:
        ValueError: missing, empty, unreadable or malformed file; no structures; unknown
            elements; non-finite coordinates or labels; a label missing from a frame; a CIF
            that is not an ordered crystal; overlapping atoms; a POSCAR without species.
    """
    from sciml.data.structure_files import read_structure_file

    path = Path(path)
    check_structure_file(path)
    frames = read_structure_file(path, index=index, format=format, species=species)
    check_structures(frames, str(path), energy_key, forces_key, stress_key, property_keys, required)
    return frames



def check_structures(
    frames: Sequence[ase.Atoms],
    source: str = "structures",
    energy_key: Optional[str] = "energy",
    forces_key: Optional[str] = "forces",
    stress_key: Optional[str] = "stress",
    property_keys: Sequence[str] = (),
    required: Sequence[str] = (),
) -> None:
    """Validate frames as :func:`read_structures` does; ``source`` names them in messages."""
    unknown = set(required) - set(LABELS)
    if unknown:
        raise ValueError(f"required labels must be among {LABELS}, got {sorted(unknown)}")
    if len(frames) == 0:
        raise ValueError(f"{source}: contains no structures")
    keys = {label: key for label, key in zip(LABELS, (energy_key, forces_key, stress_key)) if key is not None}
    if set(required) - set(keys):
        raise ValueError(f"labels {sorted(set(required) - set(keys))} are required but their keys are None")
    for number, atoms in enumerate(frames):
        where = f"{source}: frame {number}"
        if len(atoms) == 0:
            raise ValueError(f"{where} has no atoms")
        z = atoms.get_atomic_numbers()
        if (z < 1).any() or (z > 118).any():
            bad = atoms.get_chemical_symbols()[int(np.flatnonzero((z < 1) | (z > 118))[0])]
            raise ValueError(f"{where}: unknown element {bad!r}")
        for name, values in (("coordinates", atoms.positions), ("cell", atoms.cell.array)):
            if not np.isfinite(values).all():
                raise ValueError(f"{where}: {name} contain NaN or inf")
    for label, key in keys.items():
        present = [_lookup(atoms, key) is not None for atoms in frames]
        if label in required or any(present):
            _require(frames, present, key, f"{label} label", source)
    for key in property_keys:
        _require(frames, [_lookup(atoms, key) is not None for atoms in frames], key, "property", source)
    for key in list(keys.values()) + list(property_keys):
        for number, atoms in enumerate(frames):
            value = _lookup(atoms, key)
            if value is not None and _is_numeric(value) and not np.isfinite(np.asarray(value, dtype=float)).all():
                raise ValueError(f"{source}: frame {number}: {key!r} contains NaN or inf")


def load_graph_dataset(
    source: Union[str, os.PathLike, Sequence[ase.Atoms]],
    cutoff: "float | GraphSpec",
    max_neighbors: Optional[int] = None,
    energy_key: Optional[str] = "energy",
    forces_key: Optional[str] = "forces",
    stress_key: Optional[str] = "stress",
    property_keys: Sequence[str] = (),
    required: Sequence[str] = (),
    dtype: torch.dtype = torch.float32,
    index: Union[str, int] = ":",
) -> List[AtomicGraph]:
    """One single-structure :class:`AtomicGraph` per frame, edges built once within ``cutoff`` Å
    (or as a :class:`~sciml.graph.GraphSpec` says, e.g. a model's ``GraphSpec.of(model)``).

    ``source`` is a file (read with :func:`read_structures`) or a list of ``ase.Atoms`` (checked
    the same way). A progress bar is shown for more than 1000 structures on a terminal.
    """
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        frames = read_structures(source, index, energy_key, forces_key, stress_key, property_keys, required)
    else:
        name, frames = "structures", list(source)
        check_structures(frames, name, energy_key, forces_key, stress_key, property_keys, required)
    graphs = []
    quiet = True if len(frames) <= _PROGRESS_THRESHOLD else None  # None: show on a terminal only
    for number, atoms in enumerate(tqdm(frames, desc="building graphs", unit="structure", disable=quiet)):
        try:
            graphs.append(
                AtomicGraph.from_ase(atoms, cutoff, max_neighbors, dtype, energy_key, forces_key, stress_key, property_keys)
            )
        except ValueError as err:
            raise ValueError(f"{name}: frame {number}: {err}") from None
    return graphs


def _lookup(atoms: ase.Atoms, key: str) -> Any:
    """A label from the calculator's results, ``info`` or ``arrays`` (None when absent)."""
    results = atoms.calc.results if atoms.calc is not None else {}
    for store in (results, atoms.info, atoms.arrays):
        if key in store:
            return store[key]
    return None


def _require(frames: Sequence[ase.Atoms], present: List[bool], key: str, what: str, source: str) -> None:
    if all(present):
        return
    number = present.index(False)
    atoms = frames[number]
    stores: Dict[str, List[str]] = {
        "calculator": sorted(atoms.calc.results) if atoms.calc is not None else [],
        "info": sorted(atoms.info),
        "arrays": sorted(k for k in atoms.arrays if k not in ("numbers", "positions")),
    }
    found = "; ".join(f"{store}: {', '.join(names) or '-'}" for store, names in stores.items())
    raise ValueError(f"{source}: frame {number} has no {what} {key!r} (keys present: {found})")


def _is_numeric(value: Any) -> bool:
    return np.asarray(value).dtype.kind in "biuf"


def check_structure_file(path: "str | Path") -> None:
    """ValueError naming ``path`` when it is missing, a directory or empty."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a structure file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty")


def read_structure_frames(path: Union[str, os.PathLike]) -> List[ase.Atoms]:
    """Every frame of a structure file, unchecked for labels (the ``ase`` format's reader; the
    trainer checks the labels it needs with :func:`check_structures`).

    Raises:
        ValueError: missing, empty or unreadable file (as :func:`read_structures`).
    """
    from sciml.data.structure_files import read_structure_file

    check_structure_file(path)
    return read_structure_file(Path(path))


register_format(DataFormat(
    name=DEFAULT_FORMAT, kind=STRUCTURES, read=read_structure_frames, streamable=True,
    description="extxyz/xyz, CIF, POSCAR, ase .db/.traj or any ase-readable file"))

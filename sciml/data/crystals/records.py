"""The crystal record: one structure, its id and its scalar targets, as every reader returns it."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ase

from sciml.data.crystals.validation import CrystalInputError

#: Strings that stand for a missing value in the public datasets (JARVIS writes "na").
MISSING = ("na", "nan", "none", "null", "")


@dataclass
class CrystalRecord:
    """One crystal of a dataset.

    Attributes:
        id: the dataset's identifier (``"JVASP-1002"``, ``"mp-149"``, ``"mb-mp-e-form-000001"``).
        atoms: the structure, periodic in all three directions (``pbc`` all True); positions Å,
            cell vectors as rows, Å.
        targets: scalar labels by name in the dataset's units (e.g. ``formation_energy_peratom``
            eV/atom, ``optb88vdw_bandgap`` eV); None where the dataset has no value. Booleans
            (MatBench ``is_metal``) are stored as 0.0 / 1.0.
    """

    id: str
    atoms: ase.Atoms
    targets: Dict[str, Optional[float]] = field(default_factory=dict)


def as_target(value: Any) -> Optional[float]:
    """A dataset value as a target: a float, or None for missing (``None``, ``"na"``, NaN).

    Raises:
        ValueError: the value is neither a number nor a missing marker (a list, a word).
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in MISSING:
            return None
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    if isinstance(value, numbers.Real):  # bool, int, float and numpy scalars
        number = float(value)
        return None if math.isnan(number) else number
    raise ValueError(f"{type(value).__name__} value is not a scalar number")


def named_targets(entry: Mapping[str, Any], names: Sequence[str], source: str) -> Dict[str, Optional[float]]:
    """``{name: as_target(entry[name])}`` for each of ``names`` (missing keys give None).

    Raises:
        CrystalInputError: a value is not a number or a missing marker; the message names
            ``source`` and the target.
    """
    values = {}
    for name in names:
        try:
            values[name] = as_target(entry.get(name))
        except ValueError as err:
            raise CrystalInputError(f"{source}: target {name!r}: {err}") from None
    return values


def records_to_atoms(records: Sequence[CrystalRecord], target: str) -> List[ase.Atoms]:
    """The structures that have a value for ``target``, ready for training.

    Each returned ``ase.Atoms`` is a copy of the record's, with ``info[target]`` (float) and
    ``info["id"]`` (str) set; records whose target is missing (None or NaN) are dropped. Order is
    kept.

    Raises:
        ValueError: no record has ``target`` among its targets at all (the message lists the
            targets that exist), which is a misspelt name rather than missing values.
    """
    if records and not any(target in record.targets for record in records):
        available = sorted({name for record in records for name in record.targets})
        raise ValueError(f"unknown target {target!r}; the records have: {', '.join(available) or 'no targets'}")
    out = []
    for record in records:
        value = record.targets.get(target)
        if value is None or math.isnan(value):
            continue
        atoms = record.atoms.copy()
        atoms.info[target] = float(value)
        atoms.info["id"] = record.id
        out.append(atoms)
    return out

"""Writing batch-inference results: csv and json summary rows, or extxyz with the predictions attached.

Summary rows (:func:`summary_row`): file, index, formula, atoms, energy (eV, and per atom), largest
force (eV/Å), pressure (GPa) and scalar properties, each when predicted. extxyz output reads each
structure again from its file and adds ``sciml_<output>`` arrays (energies, forces) and info
(energy, stress, properties).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, List, Sequence

import numpy as np

from sciml.data.structure_index import StructureItem, read_item
from sciml.inference import PER_ATOM

OUTPUT_FORMATS = ("csv", "json", "extxyz", "xyz")
PREFIX = "sciml_"  # extxyz keys of predictions, like MACE's "MACE_energy"
EV_PER_A3_IN_GPA = 160.21766208


def output_format(output: "str | os.PathLike") -> str:
    """``csv``, ``json`` or ``extxyz`` from the file name; ValueError for anything else."""
    kind = Path(output).suffix.lower().lstrip(".")
    if kind not in OUTPUT_FORMATS:
        raise ValueError(f"--output must end in .csv, .json or .extxyz, got {Path(output).name}")
    return "extxyz" if kind == "xyz" else kind


def summary_row(record: dict) -> dict:
    """The table/csv row of a result record: file, index, formula, atoms, energy (eV, and per
    atom), largest force (eV/Å), pressure (GPa) and scalar properties, each when predicted."""
    out = {"file": str(Path(record["file"])), "index": record["index"], "formula": record["formula"],
           "atoms": record["atoms"]}
    if "energy" in record:
        out["energy_eV"] = record["energy"]
        out["energy_per_atom_eV"] = record["energy"] / record["atoms"]
    if "forces" in record:
        out["max_force_eV_per_A"] = float(np.linalg.norm(np.asarray(record["forces"]), axis=1).max())
    if "stress" in record:
        out["pressure_GPa"] = float(-np.trace(np.asarray(record["stress"])) / 3 * EV_PER_A3_IN_GPA)
    for key, value in record.get("properties", {}).items():
        if np.ndim(value) == 0:
            out[key] = value
    return out


def summary_columns(fields: Sequence[str]) -> List[str]:
    """The summary columns of records whose outputs are ``fields`` (see :func:`~sciml.batch_journal.output_fields`)."""
    columns = ["file", "index", "formula", "atoms"]
    named = {"energy": ["energy_eV", "energy_per_atom_eV"], "forces": ["max_force_eV_per_A"],
             "stress": ["pressure_GPa"]}
    for name in ("energy", "forces", "stress"):
        columns += named[name] if name in fields else []
    return columns + [name for name in fields if name not in named]


def write_predictions(output: Path, kind: str, items: Sequence[StructureItem], records: Iterable[dict],
                      fields: Sequence[str]) -> None:
    """Write ``records`` (results of ``items``, same order) to ``output`` atomically, streaming:
    csv (summary rows), json (summary rows with energies_eV per atom, forces_eV_per_A and
    stress_eV_per_A3) or extxyz (each structure read again from its file, with ``sciml_<output>``
    arrays: energies, forces; and info: energy, stress, properties)."""
    from sciml.io.files import atomic_path

    with atomic_path(output) as tmp, open(tmp, "w", newline="") as handle:
        if kind == "csv":
            writer = csv.DictWriter(handle, fieldnames=summary_columns(fields), restval="")
            writer.writeheader()
            writer.writerows(summary_row(record) for record in records)
        elif kind == "json":
            handle.write("[")
            for number, record in enumerate(records):
                row = summary_row(record)
                if "energies" in record:
                    row["energies_eV"] = record["energies"]
                if "forces" in record:
                    row["forces_eV_per_A"] = record["forces"]
                if "stress" in record:
                    row["stress_eV_per_A3"] = record["stress"]
                handle.write(("," if number else "") + "\n " + json.dumps(row, indent=1).replace("\n", "\n "))
            handle.write("\n]\n")
        else:
            from ase.io import write

            cache: dict = {}
            for item, record in zip(items, records):
                write(handle, _with_predictions(read_item(item, cache), item, record), format="extxyz")


def _with_predictions(atoms, item: StructureItem, record: dict):
    if len(atoms) != record["atoms"]:
        raise ValueError(f"{item.where} has changed since it was predicted; pass --force to start over")
    atoms.calc = None
    for key in ("energy", "energies", "forces", "stress"):
        if key in record:
            value = np.asarray(record[key], dtype=float)
            if key in PER_ATOM:
                atoms.arrays[PREFIX + key] = value
            else:
                atoms.info[PREFIX + key] = value.reshape(-1) if key == "stress" else float(value)
    for key, value in record.get("properties", {}).items():
        atoms.info[PREFIX + key] = value if np.ndim(value) == 0 else np.asarray(value)
    return atoms

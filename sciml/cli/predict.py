"""``sciml predict``: energies, forces and stress of structures in files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from sciml.cli.common import add_command, refuse_overwrite

EXAMPLES = """  sciml predict --checkpoint runs/ethanol/best.pt frames.extxyz --output predictions.extxyz
  sciml predict --checkpoint model.pt POSCAR a.cif b.cif --output predictions.csv
  sciml predict --checkpoint model.pt structures.xyz --output predictions.json --batch-size 64
"""
PREFIX = "sciml_"  # extxyz keys of predictions, like MACE's "MACE_energy"


def register(sub) -> None:
    parser = add_command(sub, "predict", "predict energies/forces/stress for structure files", EXAMPLES)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("files", nargs="+", help="CIF, POSCAR, xyz, extxyz or any ase-readable file")
    parser.add_argument("--output", required=True, help="out.csv, out.json or out.extxyz")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    parser.set_defaults(run=run)


def run(args) -> int:
    from sciml.inference import predict
    from sciml.data.readers import read_structures
    from sciml.io.files import atomic_path, write_extxyz
    from sciml.inference import load_model

    output = refuse_overwrite(args.output, args.force)
    kind = output.suffix.lower().lstrip(".")
    if kind not in ("csv", "json", "extxyz", "xyz"):
        raise ValueError(f"--output must end in .csv, .json or .extxyz, got {output.name}")
    structures, sources = [], []
    for path in args.files:
        frames = read_structures(path, energy_key=None, forces_key=None, stress_key=None)
        structures += frames
        sources += [(path, k) for k in range(len(frames))]
    model = load_model(args.checkpoint, device=args.device)
    results = predict(structures, model, batch_size=args.batch_size, device=args.device)
    if kind in ("extxyz", "xyz"):
        for atoms, row in zip(structures, results):
            atoms.calc = None
            atoms.info[f"{PREFIX}energy"] = row["energy"]
            atoms.arrays[f"{PREFIX}forces"] = row["forces"]
            if "stress" in row:
                atoms.info[f"{PREFIX}stress"] = row["stress"].reshape(-1)
        write_extxyz(output, structures)
    else:
        rows = [_summary_row(atoms, source, row) for atoms, source, row in zip(structures, sources, results)]
        if kind == "json":  # JSON keeps the full arrays
            for out, row in zip(rows, results):
                out["forces_eV_per_A"] = row["forces"].tolist()
                if "stress" in row:
                    out["stress_eV_per_A3"] = row["stress"].tolist()
        with atomic_path(output) as tmp, open(tmp, "w", newline="") as handle:
            if kind == "json":
                json.dump(rows, handle, indent=1)
            else:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    print(f"wrote predictions for {len(structures)} structures to {output}")
    return 0


def _summary_row(atoms, source, row) -> dict:
    path, index = source
    forces = row["forces"]
    out = {
        "file": str(Path(path)), "index": index, "formula": atoms.get_chemical_formula(), "atoms": len(atoms),
        "energy_eV": row["energy"], "energy_per_atom_eV": row["energy"] / len(atoms),
        "max_force_eV_per_A": float(np.linalg.norm(forces, axis=1).max()),
    }
    if "stress" in row:
        out["pressure_GPa"] = float(-np.trace(row["stress"]) / 3 * 160.21766208)
    return out

"""``sciml predict``: energies, forces and stress, or the properties a model predicts, of structures in files."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from sciml.cli.common import add_command, refuse_overwrite

EXAMPLES = """  sciml predict --checkpoint runs/ethanol/best.pt frames.extxyz --output predictions.extxyz
  sciml predict --checkpoint runs/jarvis_formation/best.pt cifs/*.cif          # prints a property table
  sciml predict --checkpoint model.pt POSCAR a.cif b.cif --output predictions.csv
  sciml predict --checkpoint model.pt structures.xyz --output predictions.json --batch-size 64
"""
PREFIX = "sciml_"  # extxyz keys of predictions, like MACE's "MACE_energy"


def register(sub) -> None:
    parser = add_command(sub, "predict", "predict energies/forces/stress or properties for structure files", EXAMPLES)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("files", nargs="+", help="CIF, POSCAR, xyz, extxyz or any ase-readable file")
    parser.add_argument("--output", help="out.csv, out.json or out.extxyz (default: print a table only)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    parser.set_defaults(run=run)


def run(args) -> int:
    from sciml.inference import load_model, predict
    from sciml.io.files import atomic_path, write_extxyz

    output = refuse_overwrite(args.output, args.force) if args.output else None
    kind = output.suffix.lower().lstrip(".") if output else None
    if output and kind not in ("csv", "json", "extxyz", "xyz"):
        raise ValueError(f"--output must end in .csv, .json or .extxyz, got {output.name}")
    model = load_model(args.checkpoint, device=args.device)
    structures, sources, results, bad = [], [], [], []
    for path in args.files:  # a bad file is listed and skipped, the others are predicted
        try:
            frames = _read(path)
            predicted = predict(frames, model, batch_size=args.batch_size, device=args.device)
        except (ValueError, OSError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            bad.append((path, reason if str(path) in reason else f"{path}: {reason}"))
            continue
        structures += frames
        sources += [(path, k) for k in range(len(frames))]
        results += predicted
    if not structures:
        if len(bad) == 1:
            raise ValueError(bad[0][1])
        raise ValueError("no structure could be predicted; bad files: " + "; ".join(reason for _, reason in bad))
    for path, reason in bad:
        print(f"skipped {reason}", file=sys.stderr)
    rows = [_summary_row(atoms, source, row) for atoms, source, row in zip(structures, sources, results)]
    if output is None:
        print(_table(rows))
    elif kind in ("extxyz", "xyz"):
        for atoms, row in zip(structures, results):
            atoms.calc = None
            for key, value in row.items():
                store = atoms.arrays if key == "forces" else atoms.info
                store[f"{PREFIX}{key}"] = value.reshape(-1) if key == "stress" else value
        write_extxyz(output, structures)
    else:
        if kind == "json":  # JSON keeps the full arrays
            for out, row in zip(rows, results):
                if "forces" in row:
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
    if output is not None:
        print(f"wrote predictions for {len(structures)} structures to {output}")
    if bad:
        print(f"skipped {len(bad)} bad file{'s' * (len(bad) != 1)} (listed above)", file=sys.stderr)
    return 0


def _read(path: str) -> list:
    """Structures of one file; CIFs are validated (partial occupancies, overlapping atoms, missing
    lattice, unknown elements raise an error naming the file)."""
    from sciml.data.crystals import read_cif
    from sciml.data.readers import read_structures

    if Path(path).suffix.lower() == ".cif":
        return [read_cif(path)]
    return read_structures(path, energy_key=None, forces_key=None, stress_key=None)


def _summary_row(atoms, source, row) -> dict:
    path, index = source
    out = {"file": str(Path(path)), "index": index, "formula": atoms.get_chemical_formula(), "atoms": len(atoms)}
    if "energy" in row:
        out["energy_eV"] = row["energy"]
        out["energy_per_atom_eV"] = row["energy"] / len(atoms)
    if "forces" in row:
        out["max_force_eV_per_A"] = float(np.linalg.norm(row["forces"], axis=1).max())
    if "stress" in row:
        out["pressure_GPa"] = float(-np.trace(row["stress"]) / 3 * 160.21766208)
    for key, value in row.items():
        if key not in ("energy", "forces", "stress") and np.ndim(value) == 0:
            out[key] = value
    return out


def _table(rows: list) -> str:
    """A fixed-width text table of the summary rows (floats with 6 significant digits)."""
    columns = list(rows[0])
    cells = [[f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[k]) for line in cells)) for k, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)

"""Classify every structure file of a folder: is it read right by sciml's reader?

    python workflows/structure_corpus/classify.py FOLDER [--manifest OUT.json] [--timeout 60]
                                                  [--entry read_structures|predict] [--expected MANIFEST]

Each file is read by sciml (``--entry read_structures``: :func:`sciml.data.read_structures`, the
reader of train/md/relax/check; ``--entry predict``: batch inference's index and read, as
``sciml predict`` does) in a worker process under a time limit, and compared with what the file
itself says (:func:`expectation`):

- CIF (``.cif``, ``.mcif``, any case, ``.gz``): pymatgen's ``CifParser`` with occupancy tolerance
  1 (exact) gives, per data block, the composition, atom count and cell volume; a block that
  pymatgen finds disordered, that lists ``_atom_site_attached_hydrogens`` > 0, or whose atoms come
  closer than 0.5 Å is expected to be refused;
- POSCAR/CONTCAR/``*.vasp``: the species and count lines of the file (wrapped lines joined); no
  species line: expected refused; the cell volume from the scale and lattice lines;
- xyz/extxyz: the atom count line and element column of every frame.

Outcomes: ``read_right``, ``clean_refusal`` (a one-line ValueError naming the file, where a refusal
is expected), ``crash`` (any other exception, or an error of several lines or not naming the file),
``hang`` (over the time limit), ``silent_wrong`` (read, but not what the file says, or read where a
refusal is expected), ``false_refusal`` (refused, but the file is a valid ordered structure) and
``unknown`` (no expectation: pymatgen could not parse a CIF that sciml refused too).

Expectations set by hand (``reviewed.json`` beside this script: files where pymatgen is wrong or
gives none, each with a note) take precedence; ``--expected MANIFEST`` takes every expectation from
a manifest written earlier (``--manifest``) instead of computing them. A refusal's ``category``
(:func:`refusal_category`) is recorded from sciml's message. Prints the count per outcome and the
files that are not read right or cleanly refused.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import re
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

OUTCOMES = ("read_right", "clean_refusal", "crash", "hang", "silent_wrong", "false_refusal", "unknown")
VOLUME_RTOL = 1e-3
REVIEWED = Path(__file__).with_name("reviewed.json")
#: Refusal categories and the words of sciml's message that mark them (first match wins).
CATEGORIES = (
    ("no_species", "no species line"),
    ("occupancy", "partial occupancies"),
    ("implicit_hydrogens", "implicit hydrogen"),
    ("overlap", "overlapping atoms"),
    ("not_an_element", "unknown element"),
    ("degenerate", "degenerate"),
    ("missing_lattice", "missing lattice"),
    ("bad_symmetry", "symmetry operation"),
    ("empty", "file is empty"),
    ("unparsable", "cannot read file"),
    ("unparsable", "unparsable CIF"),
    ("no_atoms", "no atoms"),
)


def refusal_category(message: str) -> str:
    """The :data:`CATEGORIES` name of a refusal message (``other`` when none matches)."""
    for name, words in CATEGORIES:
        if words in message:
            return name
    return "other"


# ------------------------------------------------------------------------------- what sciml gives
def sciml_read(path: str, entry: str) -> Dict[str, Any]:
    """``{"outcome": "read", "frames": [...]}`` or ``{"outcome": "refuse"/"crash", "error": ...}``."""
    try:
        if entry == "predict":
            from sciml.batch_inference import index_structures, read_item

            items, errors = index_structures([path])
            if errors:
                raise ValueError(errors[0])
            frames = [read_item(item) for item in items]
        else:
            from sciml.data import read_structures

            frames = read_structures(path, energy_key=None, forces_key=None, stress_key=None)
    except ValueError as err:
        message = str(err)
        clean = "\n" not in message.strip() and path in message and type(err).__name__ in (
            "ValueError", "CrystalInputError")
        return {"outcome": "refuse" if clean else "crash", "error": f"{type(err).__name__}: {message}"}
    except BaseException as err:  # noqa: BLE001 - anything else is a crash, recorded
        return {"outcome": "crash", "error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"}
    return {"outcome": "read", "frames": [describe(atoms) for atoms in frames]}


def describe(atoms) -> Dict[str, Any]:
    """Atom count, composition and (periodic) cell volume of a structure."""
    volume = float(abs(np.linalg.det(atoms.cell.array))) if atoms.pbc.all() else None
    return {"natoms": len(atoms), "composition": dict(sorted(Counter(atoms.get_chemical_symbols()).items())),
            "volume": volume}


def _worker(connection, entry: str) -> None:
    warnings.simplefilter("ignore")
    while True:
        path = connection.recv()
        if path is None:
            return
        connection.send(sciml_read(path, entry))


class Reader:
    """sciml's reader in a worker process, restarted after a file runs past ``timeout`` s."""

    def __init__(self, entry: str, timeout: float):
        self.entry, self.timeout, self.process = entry, timeout, None

    def _start(self) -> None:
        context = mp.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, self.entry), daemon=True)
        self.process.start()

    def read(self, path: str) -> Dict[str, Any]:
        if self.process is None or not self.process.is_alive():
            self._start()
        self.connection.send(path)
        if self.connection.poll(self.timeout):
            try:
                return self.connection.recv()
            except EOFError:
                self.process = None
                return {"outcome": "crash", "error": "the reading process died"}
        self.process.kill()
        self.process.join()
        self.process = None
        return {"outcome": "hang", "error": f"no answer in {self.timeout:g} s"}

    def close(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.connection.send(None)
            self.process.join(5)


# ------------------------------------------------------------------------------- what the file says
def file_kind(path: Path) -> str:
    """``cif``, ``vasp``, ``xyz`` or ``other``, from the name as a user would read it."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".cif", ".mcif")):
        return "cif"
    if name.startswith(("poscar", "contcar")) or name.endswith((".vasp", ".poscar")):
        return "vasp"
    if name.endswith((".xyz", ".extxyz")):
        return "xyz"
    return "other"


def file_text(path: Path) -> str:
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def expectation(path: Path) -> Dict[str, Any]:
    """``{"outcome": "read", "frames": [...]}``, ``{"outcome": "refuse", "reason": ...}`` or
    ``{"outcome": "unknown", "reason": ...}``, from the file itself (see the module docstring)."""
    kind = file_kind(path)
    try:
        text = file_text(path)
    except Exception as err:  # noqa: BLE001
        return {"outcome": "refuse", "reason": f"unreadable: {type(err).__name__}"}
    if not text.strip():
        return {"outcome": "refuse", "reason": "empty"}
    readers = {"cif": _cif_expectation, "vasp": _poscar_expectation, "xyz": _xyz_expectation}
    if kind not in readers:
        return {"outcome": "unknown", "reason": "no independent reader for this format"}
    try:
        return readers[kind](text)
    except Exception as err:  # noqa: BLE001 - the file is beyond these simple readers
        return {"outcome": "unknown", "reason": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"}


def _cif_expectation(text: str) -> Dict[str, Any]:
    from pymatgen.io.cif import CifParser

    if re.search(r"^\s*_atom_site_attached_hydrogens", text, flags=re.MULTILINE | re.IGNORECASE):
        attached = _loop_column(text, "_atom_site_attached_hydrogens")
        if any(re.fullmatch(r"[1-9]\d*", value) for value in attached):
            return {"outcome": "refuse", "reason": "implicit hydrogens"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = CifParser.from_str(text, occupancy_tolerance=1.0)
            structures = parser.parse_structures(primitive=False, on_error="raise")
    except Exception as err:  # noqa: BLE001 - pymatgen refuses this file
        return {"outcome": "unknown", "reason": f"pymatgen: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}"}
    if not structures:
        return {"outcome": "refuse", "reason": "no structure"}
    frames = []
    for structure in structures:
        if not structure.is_ordered:
            return {"outcome": "refuse", "reason": "partial or mixed occupancy"}
        if len(structure) > 1 and structure.distance_matrix[np.triu_indices(len(structure), 1)].min() < 0.5:
            return {"outcome": "refuse", "reason": "overlapping atoms"}
        composition = Counter(site.specie.symbol for site in structure)
        frames.append({"natoms": len(structure), "composition": dict(sorted(composition.items())),
                       "volume": float(structure.volume)})
    return {"outcome": "read", "frames": frames}


def _loop_column(text: str, tag: str) -> List[str]:
    """The values of ``tag`` in the loop that holds it (simple whitespace-separated loops)."""
    values: List[str] = []
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if line.strip().lower() != tag:
            continue
        start = k
        while start > 0 and lines[start - 1].strip().startswith("_"):
            start -= 1
        end = k
        while end + 1 < len(lines) and lines[end + 1].strip().startswith("_"):
            end += 1
        column = k - start
        for row in lines[end + 1:]:
            stripped = row.strip()
            if not stripped or stripped.startswith(("_", "loop_", "data_", "#")):
                break
            tokens = stripped.split()
            if column < len(tokens):
                values.append(tokens[column])
    return values


def _poscar_expectation(text: str) -> Dict[str, Any]:
    lines = [line.split("!")[0].split("#")[0] for line in text.splitlines()]
    if len(lines) < 8:
        return {"outcome": "refuse", "reason": "too short"}
    try:
        scale = float(lines[1].split()[0])
        lattice = np.array([[float(v) for v in lines[k].split()[:3]] for k in (2, 3, 4)])
    except (ValueError, IndexError):
        return {"outcome": "refuse", "reason": "no lattice"}
    row, species, counts = 5, [], []
    while row < len(lines) and lines[row].split() and lines[row].split()[0][0].isalpha():
        species += lines[row].split()
        row += 1
    while row < len(lines) and lines[row].split() and all(t.isdigit() for t in lines[row].split()):
        counts += [int(t) for t in lines[row].split()]
        row += 1
        if species and len(counts) >= len(species):
            break
    if not species:
        return {"outcome": "refuse", "reason": "no species line"}
    if len(species) != len(counts):
        return {"outcome": "refuse", "reason": "species and counts differ in number"}
    elements = [re.split(r"[_/.]", s)[0].capitalize() for s in species]
    composition: Counter = Counter()
    for element, count in zip(elements, counts):
        composition[element] += count
    volume = abs(np.linalg.det(lattice)) * (scale ** 3 if scale > 0 else 1.0)
    if scale < 0:
        volume = -scale
    if volume < 1e-6 * float(np.prod(np.linalg.norm(lattice, axis=1))) * abs(scale) ** 3:
        return {"outcome": "refuse", "reason": "degenerate cell"}
    if row < len(lines) and lines[row].strip()[:1].lower() == "s":
        row += 1  # Selective dynamics
    row += 1  # Direct / Cartesian
    coordinates = 0
    for line in lines[row: row + sum(counts)]:
        try:
            [float(v) for v in line.split()[:3]]
        except ValueError:
            break
        coordinates += len(line.split()) >= 3
    if coordinates < sum(counts):
        return {"outcome": "refuse", "reason": f"{coordinates} coordinate lines for {sum(counts)} atoms"}
    return {"outcome": "read", "frames": [{"natoms": sum(counts), "composition": dict(sorted(composition.items())),
                                           "volume": float(volume)}]}


def _xyz_expectation(text: str) -> Dict[str, Any]:
    lines, frames, row = text.splitlines(), [], 0
    while row < len(lines) and lines[row].strip():
        try:
            natoms = int(lines[row].split()[0])
        except ValueError:
            return {"outcome": "refuse", "reason": "no atom count"}
        block = lines[row + 2: row + 2 + natoms]
        if len(block) < natoms:
            return {"outcome": "refuse", "reason": "frame cut short"}
        comment = lines[row + 1]
        symbols = [line.split()[0].capitalize() for line in block]
        volume = None
        match = re.search(r'Lattice="([^"]+)"', comment)
        periodic = re.search(r'pbc="([^"]+)"', comment)
        if match and (periodic is None or all(v in "Tt1" for v in periodic.group(1).split())):
            volume = float(abs(np.linalg.det(np.array(match.group(1).replace(",", " ").split(), float).reshape(3, 3))))
        frames.append({"natoms": natoms, "composition": dict(sorted(Counter(symbols).items())), "volume": volume})
        row += 2 + natoms
    if not frames:
        return {"outcome": "refuse", "reason": "no frames"}
    return {"outcome": "read", "frames": frames}


# ------------------------------------------------------------------------------- classification
def same_frames(got: List[dict], expected: List[dict]) -> bool:
    """Same number of frames, and per frame the same atom count, composition and volume."""
    if len(got) != len(expected):
        return False
    for a, b in zip(got, expected):
        if a["natoms"] != b["natoms"] or a["composition"] != b["composition"]:
            return False
        if b.get("volume") is not None and (a["volume"] is None
                                            or abs(a["volume"] - b["volume"]) > VOLUME_RTOL * b["volume"]):
            return False
    return True


def classify(got: Dict[str, Any], expected: Dict[str, Any]) -> str:
    """One of :data:`OUTCOMES`."""
    if got["outcome"] in ("crash", "hang"):
        return got["outcome"]
    if expected["outcome"] == "unknown":
        return "clean_refusal" if got["outcome"] == "refuse" else "unknown"
    if got["outcome"] == "refuse":
        return "clean_refusal" if expected["outcome"] == "refuse" else "false_refusal"
    if expected["outcome"] == "refuse":
        return "silent_wrong"
    return "read_right" if same_frames(got["frames"], expected["frames"]) else "silent_wrong"


def structure_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".json", ".md")))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--manifest", type=Path, help="write per-file expectations and results here (JSON)")
    parser.add_argument("--expected", type=Path, help="take the expectations from this manifest")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per file before it counts as a hang")
    parser.add_argument("--entry", choices=["read_structures", "predict"], default="read_structures")
    args = parser.parse_args(argv)
    reviewed = json.loads(REVIEWED.read_text())["files"] if REVIEWED.exists() else {}
    if args.expected:
        reviewed = {**json.loads(args.expected.read_text())["files"], **reviewed}
    reader = Reader(args.entry, args.timeout)
    records, counts = {}, Counter()
    try:
        for path in structure_files(args.folder):
            name = path.relative_to(args.folder).as_posix()
            expected = reviewed[name]["expected"] if name in reviewed else expectation(path)
            got = reader.read(str(path))
            outcome = classify(got, expected)
            if got["outcome"] == "refuse":
                got["category"] = refusal_category(got["error"])
            counts[outcome] += 1
            records[name] = {"expected": expected, "got": got, "class": outcome}
            if outcome not in ("read_right", "clean_refusal"):
                print(f"{outcome:14} {name}: {got.get('error') or got.get('frames')} | expected {expected}")
    finally:
        reader.close()
    total = sum(counts.values())
    print(f"{total} files: " + ", ".join(f"{name} {counts[name]}" for name in OUTCOMES))
    if args.manifest:
        args.manifest.write_text(json.dumps({"counts": {k: counts[k] for k in OUTCOMES}, "files": records},
                                            indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

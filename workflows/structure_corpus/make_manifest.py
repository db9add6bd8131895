"""Copy a chosen subset of a classified corpus into datasets/structure_corpus and write its manifest.

    python workflows/structure_corpus/make_manifest.py RAW_FOLDER CLASSIFIED.json SELECTION.txt OUT_FOLDER

``CLASSIFIED.json`` is what ``classify.py RAW_FOLDER --manifest CLASSIFIED.json`` wrote after the
fixes (every file read right or cleanly refused); ``SELECTION.txt`` lists the files to ship, one
path relative to RAW_FOLDER a line. Each manifest entry holds the expectation (``read`` with the
atom count, composition and volume of every structure, from the independent reader or the
reviewed notes; ``refuse`` with the category of sciml's refusal), the source and its licence.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from classify import REVIEWED  # noqa: E402

SOURCES = {
    "made": ("written for sciml's corpus (a few are gzipped or renamed copies of other corpus files)", "MIT (sciml)"),
    "pymatgen": ("github.com/materialsproject/pymatgen tests/files (io/cif/mcif, magnetic.example.*.mcif)", "MIT"),
    "ase": ("ase 3.29 package: ase/test/testdata/minerals (COD entries), ase/test/testdata/vasp, "
            "CIF strings of ase/test/fio/test_cif.py", "LGPL-2.1-or-later (COD data: public domain)"),
    "pyxtal": ("github.com/MaterSim/PyXtal pyxtal/database/cifs", "MIT"),
    "spglib": ("github.com/spglib/spglib test/functional/python/data", "BSD-3-Clause"),
    "mace": ("github.com/ACEsuit/mace tests/references/x23_lattice_energy", "MIT"),
    "matscipy": ("github.com/libAtoms/matscipy tests, docs/topology", "LGPL-2.1-or-later"),
}


def main(raw: Path, classified: Path, selection: Path, out: Path) -> None:
    records = json.loads(classified.read_text())["files"]
    reviewed = json.loads(REVIEWED.read_text())["files"]
    names = [line.strip() for line in selection.read_text().splitlines() if line.strip()]
    files = out / "files"
    if files.exists():
        shutil.rmtree(files)
    manifest = {}
    for name in names:
        record = records[name]
        if record["class"] not in ("read_right", "clean_refusal"):
            raise SystemExit(f"{name} is {record['class']}: fix it or leave it out")
        if record["class"] == "read_right":
            expected = record["expected"]
        else:
            expected = {"outcome": "refuse", "reason": record["got"]["category"]}
        source, licence = SOURCES[name.split("/")[0]]
        entry = {"expected": expected, "source": source, "licence": licence}
        if name in reviewed:
            entry["note"] = reviewed[name]["note"]
        manifest[name] = entry
        (files / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / name, files / name)
    (out / "manifest.json").write_text(json.dumps({"files": manifest}, indent=1, sort_keys=True) + "\n")
    print(f"{len(manifest)} files, {sum(p.stat().st_size for p in files.rglob('*') if p.is_file()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:5]))

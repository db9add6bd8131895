"""OC20 S2EF downloads: ``<k>.extxyz.xz`` trajectories with their ``<k>.txt`` companions.

Each extxyz frame holds an adslab with its DFT total energy (``energy=`` in the comment line),
forces (column ``forces``, on every atom), ``tags`` (0 subsurface, 1 surface, 2 adsorbate) and
``move_mask`` (False for fixed atoms; ase turns it into a ``FixAtoms`` constraint). The companion
text file has one line per frame, in frame order::

    random1331004,frame0,-0.3974...

system id, frame id and the reference energy (eV; the clean slab plus gas-phase references)
that fairchem's ``preprocess_ef.py --ref-energy`` subtracts to make the S2EF target, the
adsorption energy. Both files may be xz-compressed or plain (``uncompress.py`` output).
"""

from __future__ import annotations

import lzma
import os
import re
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple, Union

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from sciml.data.formats import OC20, DataFormat, register_format
from sciml.data.oc20.records import Record, atoms_record, check_record
from sciml.data.readers import read_structures
from sciml.io.files import atomic_path

PathLike = Union[str, os.PathLike]
_EXTXYZ_SUFFIXES = (".extxyz.xz", ".extxyz")
_COMPANION_LINE = re.compile(r"random(\d+),frame(\d+),([^,\s]+)")


def s2ef_file_pairs(source: Union[PathLike, Sequence[PathLike]]) -> List[Tuple[Path, Path]]:
    """The (extxyz, txt) pairs of a directory, one trajectory file, or a list of them.

    A directory contributes every ``*.extxyz.xz`` and ``*.extxyz`` in it, in natural order of the
    names (``2`` before ``10``). The companion of ``<k>.extxyz[.xz]`` is ``<k>.txt`` or
    ``<k>.txt.xz`` beside it.

    Raises:
        ValueError: a missing path, a directory without trajectories, a file that is not
            extxyz, a trajectory without companion, or one stored both plain and compressed.
    """
    paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    files: List[Path] = []
    for path in paths:
        if not path.exists():
            raise ValueError(f"{path}: no such file or directory")
        if path.is_dir():
            found = [p for p in path.iterdir() if p.name.endswith(_EXTXYZ_SUFFIXES)]
            if not found:
                raise ValueError(f"{path}: no *.extxyz.xz or *.extxyz files in this directory")
            files += sorted(found, key=_natural_key)
        elif path.name.endswith(_EXTXYZ_SUFFIXES):
            files.append(path)
        else:
            raise ValueError(f"{path}: not an S2EF trajectory (expected a *.extxyz.xz or *.extxyz file)")
    pairs, stems = [], set()
    for path in files:
        stem = _stem(path)
        key = path.parent / stem
        if key in stems:
            raise ValueError(f"{key}: trajectory present both as .extxyz and .extxyz.xz; keep one")
        stems.add(key)
        companions = [path.parent / f"{stem}{suffix}" for suffix in (".txt", ".txt.xz")]
        existing = [c for c in companions if c.is_file()]
        if not existing:
            raise ValueError(f"{path}: no companion {companions[0].name} or {companions[1].name} "
                             f"(one line 'random<sid>,frame<fid>,<reference energy>' per frame)")
        pairs.append((path, existing[0]))
    return pairs


def read_s2ef_extxyz(
    source: Union[PathLike, Sequence[PathLike]], subtract_reference: bool = True
) -> Iterator[Record]:
    """Records of every frame of the S2EF files in ``source`` (see :func:`s2ef_file_pairs`).

    ``energy`` is the total energy minus the reference energy of the companion line when
    ``subtract_reference`` (the OC20 S2EF target), else the total energy; ``total_energy``,
    ``reference_energy``, ``sid`` and ``fid`` are always kept. Forces are the stored DFT forces
    on all atoms (not zeroed on fixed ones).

    Raises:
        ValueError: unreadable files, unknown elements, a malformed companion line, or a
            companion whose line count differs from the number of frames (naming file and line).
    """
    for extxyz, txt in s2ef_file_pairs(source):
        lines = _read_companion(txt)
        frames = read_structures(extxyz, ":", format="extxyz")
        if len(lines) != len(frames):
            raise ValueError(f"{txt}: has {len(lines)} lines but {extxyz} has {len(frames)} frames (one line per frame)")
        for number, (atoms, (sid, fid, reference)) in enumerate(zip(frames, lines)):
            yield check_record(frame_record(atoms, sid, fid, reference, subtract_reference), f"{extxyz}: frame {number}")


def write_s2ef_extxyz(
    stem: PathLike, frames: Sequence[ase.Atoms], ids: Sequence[Tuple[int, int, float]]
) -> Tuple[Path, Path]:
    """Write ``<stem>.extxyz.xz`` and ``<stem>.txt`` in the layout of the OC20 S2EF downloads.

    ``frames`` carry their total energy and forces (e.g. a ``SinglePointCalculator``), tags and
    ``FixAtoms`` constraint; ``ids`` holds ``(sid, fid, reference_energy)`` per frame. Both files
    are written atomically. Returns the two paths.
    """
    if len(frames) != len(ids):
        raise ValueError(f"{len(frames)} frames but {len(ids)} id lines")
    stem = Path(stem)
    extxyz, txt = stem.parent / f"{stem.name}.extxyz.xz", stem.parent / f"{stem.name}.txt"
    clean = []
    for atoms in frames:
        copy = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc, tags=atoms.get_tags(),
                         constraint=[c for c in atoms.constraints if isinstance(c, FixAtoms)])
        copy.calc = SinglePointCalculator(copy, energy=atoms.calc.results["energy"],
                                          forces=atoms.calc.results["forces"])
        clean.append(copy)
    with atomic_path(extxyz) as tmp, lzma.open(tmp, "wt") as handle:
        ase.io.write(handle, clean, format="extxyz")
    with atomic_path(txt) as tmp:
        tmp.write_text("".join(f"random{sid},frame{fid},{reference!r}\n" for sid, fid, reference in ids))
    return extxyz, txt


def frame_record(atoms: ase.Atoms, sid: int, fid: int, reference: float, subtract_reference: bool = True) -> Record:
    """The S2EF record of one labelled frame (see :func:`read_s2ef_extxyz` for the energies)."""
    record = atoms_record(atoms)
    record.update(sid=np.array(sid, dtype=np.int64), fid=np.array(fid, dtype=np.int64),
                  reference_energy=np.array(reference, dtype=np.float64))
    results = atoms.calc.results if atoms.calc is not None else {}
    if "energy" in results:
        total = float(results["energy"])
        record["total_energy"] = np.array(total)
        record["energy"] = np.array(total - reference if subtract_reference else total)
    if "forces" in results:
        record["forces"] = np.array(results["forces"], dtype=np.float64)
    return record


def _read_companion(path: Path) -> List[Tuple[int, int, float]]:
    """``(sid, fid, reference_energy)`` per line of an S2EF companion file."""
    opener = lzma.open if path.name.endswith(".xz") else open
    try:
        with opener(path, "rt") as handle:
            text = handle.read()
    except (OSError, lzma.LZMAError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read file ({type(err).__name__}: {err})") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _COMPANION_LINE.fullmatch(line.strip())
        try:
            out.append((int(match.group(1)), int(match.group(2)), float(match.group(3))))
        except (AttributeError, ValueError):  # no match, or a reference energy that is not a number
            raise ValueError(f"{path}: line {number}: expected 'random<sid>,frame<fid>,<reference energy>', "
                             f"got {line.strip()!r}") from None
    return out


def _stem(path: Path) -> str:
    for suffix in _EXTXYZ_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def is_s2ef_source(path: Path) -> bool:
    """A directory holding ``*.extxyz[.xz]`` files, or one such file with its ``.txt[.xz]`` companion."""
    if path.is_dir():
        return any(p.name.endswith(_EXTXYZ_SUFFIXES) for p in path.iterdir())
    if not path.name.endswith(_EXTXYZ_SUFFIXES):
        return False
    stem = _stem(path)
    return any((path.parent / f"{stem}{suffix}").is_file() for suffix in (".txt", ".txt.xz"))


register_format(DataFormat(
    name="s2ef-extxyz", kind=OC20, read=read_s2ef_extxyz, detect=is_s2ef_source, auto_detect=True,
    description="a directory of S2EF *.extxyz.xz + *.txt files, or one such trajectory file"))

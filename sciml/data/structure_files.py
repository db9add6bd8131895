"""Structure files read one way, whatever the file name: the kind of a file, gzip, CIF and POSCAR.

:func:`read_structure_file` is the one reader behind :func:`sciml.data.read_structures` (and so
behind ``train``, ``predict``, batch inference, ``md``, ``relax`` and ``check``). It picks the
reader from the name, case-insensitively and under a ``.gz`` suffix (:func:`structure_kind`):

- ``cif``: ``*.cif``, ``*.mcif`` (magnetic CIF): every data block with atom sites, read and
  checked site by site by :mod:`sciml.data.cif_sites`;
- ``vasp``: ``POSCAR*``, ``CONTCAR*``, ``*.vasp``, ``*.poscar``: species and count lines may wrap
  over several lines; a file without a species line (VASP 4) is refused unless ``species`` is
  given (ase would invent the elements from the comment line);
- ``extxyz``: ``*.xyz``, ``*.extxyz``;
- anything else goes to ``ase.io.read``, which guesses the format from the name and content (a
  file whose content ase takes for CIF or POSCAR is routed to the readers above).

Periodic structures read from CIF and POSCAR files must have no two atoms closer than
:data:`~sciml.data.cif_sites.MIN_DISTANCE` Å; frames of other formats no two atoms closer than
:data:`COINCIDENT_DISTANCE` Å. Every failure is a one-line ``ValueError`` naming the file.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Union

import ase
import ase.io
import numpy as np
from ase.data import atomic_numbers

from sciml.data.cif_sites import MIN_DISTANCE, cif_to_structures

#: Atoms of non-crystal formats (xyz, extxyz, ...) closer than this, Å, are one atom written twice
#: (the files also hold particle models, such as the n-body systems, whose "atoms" come within 0.1 Å).
COINCIDENT_DISTANCE = 1e-3
KINDS = ("cif", "vasp", "extxyz", "ase")


def structure_kind(path: Union[str, os.PathLike]) -> str:
    """Which reader a file name calls for: ``cif``, ``vasp``, ``extxyz`` or ``ase`` (see the
    module docstring); case-insensitive, and a ``.gz`` suffix is looked through."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith((".cif", ".mcif")):
        return "cif"
    if name.startswith(("poscar", "contcar")) or name.endswith((".vasp", ".poscar", ".contcar")):
        return "vasp"
    if name.endswith((".xyz", ".extxyz")):
        return "extxyz"
    return "ase"


def cif_files(directory: Union[str, os.PathLike]) -> List[Path]:
    """The CIF files of a folder (``*.cif``, ``*.mcif``, any case, ``.gz`` or not), sorted."""
    return sorted(p for p in Path(directory).iterdir() if p.is_file() and structure_kind(p) == "cif")


def structure_id(path: Union[str, os.PathLike]) -> str:
    """A file's name without its structure suffixes: ``mp-1.cif.gz`` and ``mp-1.CIF`` give ``mp-1``."""
    name = Path(path).name
    for suffix in (".gz", ".cif", ".mcif", ".vasp", ".extxyz", ".xyz"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def cif_block_count(path: Union[str, os.PathLike]) -> int:
    """How many ``data_`` blocks a CIF holds (a cheap count of their header lines, to index files
    without parsing them); 1 when the file cannot be read (the reader then says why)."""
    try:
        text = structure_text(Path(path))
    except ValueError:
        return 1
    return len(re.findall(r"^[ \t]*data_", text, flags=re.MULTILINE | re.IGNORECASE))


def read_structure_file(
    path: Union[str, os.PathLike],
    index: Union[str, int] = ":",
    format: Optional[str] = None,
    species: Optional[Sequence[str]] = None,
) -> List[ase.Atoms]:
    """Every structure of a file, as ``ase.Atoms`` (labels attached as ase reads them).

    Args:
        path: the file (``.gz`` compressed or not).
        index: which frames, in ase syntax (``":"`` all, ``"0:100"``, ``"-1:"``, ``-1``).
        format: an ase format name, when the name does not tell it (``"cif"`` and ``"vasp"``
            choose the readers of this module).
        species: elements of a POSCAR without a species line, in the order of its count line.

    Raises:
        ValueError: one line naming the file: unreadable, no structures, not an ordered crystal
            (CIF), no species line (POSCAR), unknown element, overlapping atoms.
    """
    path = Path(path)
    kind = _kind(path, format)
    if kind == "cif":
        frames = _select(cif_to_structures(structure_text(path), str(path)), index, path)
    elif kind == "vasp":
        frames = _select([read_poscar_text(structure_text(path), str(path), species)], index, path)
    else:
        frames = _read_with_ase(path, "extxyz" if kind == "extxyz" else format, index)
    limit = MIN_DISTANCE if kind in ("cif", "vasp") else COINCIDENT_DISTANCE
    for number, atoms in enumerate(frames):
        where = str(path) if len(frames) == 1 else f"{path}: frame {number}"
        check_no_overlap(atoms, where, limit)
    return frames


def _kind(path: Path, format: Optional[str]) -> str:
    if format is not None:
        return {"cif": "cif", "vasp": "vasp"}.get(format, "ase")
    kind = structure_kind(path)
    if kind != "ase" or path.name.lower().endswith(".gz"):
        return kind
    try:
        from ase.io.formats import filetype

        guessed = filetype(str(path), read=True)
    except Exception:  # ase raises its own types for content it cannot place
        return "ase"
    return {"cif": "cif", "vasp": "vasp"}.get(guessed, "ase")


def structure_text(path: Path, kind: str = "a text structure file") -> str:
    """The file's text (gunzipped when it ends in .gz); UTF-8, else Latin-1.

    Raises:
        ValueError: unreadable, or binary content (named as not ``kind``).
    """
    try:
        data = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read file ({type(err).__name__}: {err})") from None
    if b"\x00" in data:
        raise ValueError(f"{path}: cannot read file (binary content, not {kind})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _select(frames: List[ase.Atoms], index: Union[str, int], path: Path) -> List[ase.Atoms]:
    """The frames an ase-style ``index`` (``":"``, ``"2:10:2"``, ``"-1:"``, ``-1``, ``"3"``) picks."""
    if isinstance(index, str) and ":" in index:
        try:
            return frames[slice(*[int(p) if p.strip() else None for p in index.split(":")])]
        except (ValueError, TypeError):
            raise ValueError(f"{path}: bad frame index {index!r}") from None
    try:
        number = int(index)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: bad frame index {index!r}") from None
    if not -len(frames) <= number < len(frames):
        raise ValueError(f"{path}: frame {number} asked for, but the file holds {len(frames)}")
    return [frames[number]]


def _read_with_ase(path: Path, format: Optional[str], index: Union[str, int]) -> List[ase.Atoms]:
    source: Union[Path, io.StringIO] = path
    if path.name.lower().endswith(".gz") and format == "extxyz":
        source = io.StringIO(structure_text(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = ase.io.read(source, index=index, format=format)
    except KeyError as err:
        key = err.args[0] if err.args else None
        if isinstance(key, str) and key not in atomic_numbers:
            raise ValueError(f"{path}: unknown element symbol {key!r}") from None
        raise ValueError(f"{path}: cannot read file (KeyError: {key!r})") from None
    except Exception as err:  # ase raises many types for malformed input (XYZError, ValueError, IndexError...)
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: cannot read file ({type(err).__name__}: {reason})") from None
    return [frames] if isinstance(frames, ase.Atoms) else list(frames)


# ------------------------------------------------------------------------------- POSCAR
def _is_int(token: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", token) is not None


def _species_token(token: str) -> Optional[str]:
    """The element of a POSCAR species token (``Fe``, ``Fe_pv``, ``Fe/1a2b3c``, ``Ti1``), or None."""
    match = re.match(r"[A-Za-z]+", token)
    if match is None:
        return None
    symbol = match.group(0)[:1].upper() + match.group(0)[1:].lower()
    return symbol if atomic_numbers.get(symbol, 0) > 0 else None


def read_poscar_text(text: str, source: str, species: Optional[Sequence[str]] = None) -> ase.Atoms:
    """A POSCAR/CONTCAR from its text: species and count lines may each wrap over several lines;
    without a species line the elements must be given as ``species``.

    Raises:
        ValueError: one line starting with ``source``.
    """
    lines = text.splitlines()
    if len(lines) < 7:
        raise ValueError(f"{source}: cannot read file (a POSCAR needs at least 7 lines, found {len(lines)})")
    row = 5
    names: List[str] = []
    while row < len(lines) and lines[row].split() and not _is_int(lines[row].split()[0]):
        tokens = lines[row].split()
        if names and not all(_species_token(t) for t in tokens):
            break  # the coordinate-mode line of a file whose counts are missing
        names += tokens
        row += 1
    counts: List[int] = []
    while row < len(lines) and lines[row].split() and all(_is_int(t) for t in lines[row].split()):
        counts += [int(t) for t in lines[row].split()]
        row += 1
        if names and len(counts) >= len(names):
            break
    if not counts:
        raise ValueError(f"{source}: cannot read file (no line of atom counts after the lattice)")
    if any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"{source}: atom counts {counts} must be non-negative with at least one atom")
    if not names:
        if species is None:
            raise ValueError(f"{source}: no species line (a VASP 4 POSCAR with counts {' '.join(map(str, counts))}): "
                             f"the elements are not in the file; pass them in order with --species")
        names = list(species)
    elif species is not None and [_species_token(t) for t in names] != [_species_token(t) for t in species]:
        raise ValueError(f"{source}: --species {' '.join(species)} differs from the file's species line "
                         f"{' '.join(names)}")
    elements = []
    for name in names:
        element = _species_token(name)
        if element is None:
            raise ValueError(f"{source}: unknown element {name!r} in the species line")
        elements.append(element)
    if len(elements) != len(counts):
        raise ValueError(f"{source}: {len(elements)} species ({' '.join(names)}) but {len(counts)} counts "
                         f"({' '.join(map(str, counts))})")
    normal = lines[:5] + [" ".join(elements), " ".join(map(str, counts))] + lines[row:]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = ase.io.read(io.StringIO("\n".join(normal) + "\n"), format="vasp")
    except Exception as err:  # ase raises assorted types on malformed coordinates
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{source}: cannot read file ({type(err).__name__}: {reason})") from None
    if len(atoms) != sum(counts):
        raise ValueError(f"{source}: counts give {sum(counts)} atoms but {len(atoms)} were read")
    return atoms


# ------------------------------------------------------------------------------- checks
def check_no_overlap(atoms: ase.Atoms, where: str, limit: float = MIN_DISTANCE) -> None:
    """ValueError naming the two closest atoms when any pair (periodic images included) is closer
    than ``limit`` Å."""
    if len(atoms) < 2 and not atoms.pbc.any():
        return
    cell = atoms.cell.array
    if not np.isfinite(atoms.positions).all() or not np.isfinite(cell).all():
        return  # refused by the structure checks (NaN or inf)
    if atoms.pbc.all() and abs(np.linalg.det(cell)) < 1e-6 * max(float(np.prod(atoms.cell.lengths())), 1e-6):
        raise ValueError(f"{where}: degenerate cell (volume {abs(np.linalg.det(cell)):.3g} Å^3 for lengths "
                         f"{' '.join(f'{v:.4g}' for v in atoms.cell.lengths())} Å)")
    from sciml.graph.neighbors import neighbor_list

    try:
        i, j, shifts = neighbor_list(atoms.positions, cell if atoms.pbc.any() else None, atoms.pbc, limit)
    except ValueError as err:  # a cell singular along its periodic directions
        raise ValueError(f"{where}: {(str(err).splitlines() or [''])[0]}") from None
    if len(i) == 0:
        return
    i, j, shifts = i.numpy(), j.numpy(), shifts.numpy()
    distances = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + shifts @ cell, axis=1)
    k = int(np.argmin(distances))
    a, b = sorted((int(i[k]), int(j[k])))
    symbols = atoms.get_chemical_symbols()
    raise ValueError(f"{where}: atoms {a} ({symbols[a]}) and {b} ({symbols[b]}) are {distances[k]:.4f} Å apart, "
                     f"closer than {limit} Å (overlapping atoms)")

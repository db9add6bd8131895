"""CIF files read from their own site lists: every block, every site checked before it is expanded.

:func:`cif_to_structures` turns the text of a CIF (or magnetic CIF, ``.mcif``) into one periodic
``ase.Atoms`` per data block that holds atom sites. The text is split into blocks and tags by ase's
CIF tokenizer, or by pymatgen's when ase's fails; everything after that is done here, on the sites
the file lists, so that no reader merges or drops a site before it is checked:

- every listed site must name one element (``_atom_site_type_symbol``, else the label): ``OH2``
  or ``0.66Mg + 0.32Fe`` are refused, not read as O or Mg;
- a site with an occupancy below 1 is refused (partial occupancy), and named with the other sites
  that share its position (mixed occupancy: ``site M1 holds Zn 0.645 + Fe 0.345``);
- a site with implicit hydrogens (``_atom_site_attached_hydrogens`` > 0) is refused: the hydrogen
  atoms are not in the file;
- two atoms closer than :data:`MIN_DISTANCE` Å after symmetry expansion are refused with the two
  site labels and their distance (ase's own reader merges sites closer than its tolerance: a Cu
  and an Au on one site become Cu2);
- the symmetry operations are the file's own (``_space_group_symop_operation_xyz``,
  ``_symmetry_equiv_pos_as_xyz``, or the magnetic ``..._magn_operation_xyz`` combined with the
  ``..._magn_centering_xyz`` translations; the time-reversal part is ignored), else those of its
  Hermann-Mauguin symbol, else of its space-group number; a symbol that names no group is refused.

Images of one site closer than :data:`MERGE_DISTANCE` Å are one atom (a site on a special position
written with a few decimals). Every failure is a one-line :class:`ValueError` that starts with
the source and names the block when the file holds several.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ase
import numpy as np
from ase.data import atomic_numbers

#: Closest allowed distance between two atoms of a crystal (periodic images included), Å.
MIN_DISTANCE = 0.5
#: Images of one site closer than this are the same atom (rounded special positions), Å.
MERGE_DISTANCE = 0.05
#: Occupancies within this of 1 are full.
OCCUPANCY_TOLERANCE = 1e-3

_CELL_TAGS = ("_cell_length_a", "_cell_length_b", "_cell_length_c",
              "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_OPERATION_TAGS = ("_space_group_symop_operation_xyz", "_space_group_symop.operation_xyz",
                   "_symmetry_equiv_pos_as_xyz", "_space_group_symop.magn_operation_xyz",
                   "_space_group_symop_magn_operation.xyz", "_space_group_symop_magn_operation_xyz")
_CENTERING_TAGS = ("_space_group_symop.magn_centering_xyz", "_space_group_symop_magn_centering.xyz",
                   "_space_group_symop_magn_centering_xyz")
_SYMBOL_TAGS = ("_space_group_name_h-m_alt", "_symmetry_space_group_name_h-m", "_space_group.name_h-m_alt",
                "_space_group_name_h-m")
_NUMBER_TAGS = ("_space_group_it_number", "_space_group.it_number", "_symmetry_int_tables_number")
_MISSING = ("?", ".", "")
# an element (1-2 letters) with an optional charge: Fe, Fe3+, O2-, Cu+1, CA (COD writes capitals)
_TYPE_SYMBOL = re.compile(r"^([A-Za-z]{1,2}?)(\d*[+-]?|[+-]\d*)$")
# elements past 103 are not found in crystals: 'NH4' or 'DS' would otherwise read as Nh or Ds
_HEAVIEST = 103


@dataclass
class _Site:
    label: str
    element: str
    fractional: np.ndarray
    occupancy: float
    hydrogens: int


def cif_to_structures(text: str, source: str) -> List[ase.Atoms]:
    """Every structure of CIF ``text``, in file order; ``source`` starts every error message.

    Raises:
        ValueError: unparsable text, no block with atom sites, or a block that is not an
            ordered crystal (see the module docstring).
    """
    blocks = _blocks(text, source)
    named = len(blocks) > 1
    structures = []
    for name, tags in blocks:
        where = f"{source}: block data_{name}" if named else source
        sites = _site_table(tags, where)
        if sites is None:
            continue  # a block without atom sites: metadata, or a cell-only block
        structures.append(_structure(tags, sites, where))
    if not structures:
        raise ValueError(f"{source}: no atoms (no data block with _atom_site_fract_* or _atom_site_Cartn_* "
                         f"coordinates)")
    return structures


# ------------------------------------------------------------------------------- blocks and tags
def _blocks(text: str, source: str) -> List[Tuple[str, Dict[str, Any]]]:
    """``(name, {lower-case tag: value or list of values})`` per data block: ase's tokenizer,
    pymatgen's when ase's fails."""
    if not re.search(r"^\s*data_", text, flags=re.MULTILINE | re.IGNORECASE):
        raise ValueError(f"{source}: unparsable CIF (no data_ block: not a CIF file)")
    try:
        from ase.io.cif import parse_cif

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [(block.name, {k.lower(): v for k, v in block._tags.items()})
                    for block in parse_cif(io.StringIO(text))]
    except Exception as ase_error:  # ase raises assorted types on malformed text
        try:
            from pymatgen.io.cif import CifFile

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                parsed = CifFile.from_str(text)
            return [(name.removeprefix("data_") if isinstance(name, str) else str(name),
                     {k.lower(): v for k, v in block.data.items()}) for name, block in parsed.data.items()]
        except Exception:  # pymatgen too: report ase's reason, the first tried
            raise ValueError(f"{source}: unparsable CIF ({_describe(ase_error)})") from None


def _number(value: Any) -> Optional[float]:
    """A CIF number (``0.3140(17)``, ``1/3`` rarely, ``.778``) as float; None for ``?``/``.``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text in _MISSING:
        return None
    text = re.sub(r"\(\d*\)$", "", text)
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        return None


def _column(tags: Dict[str, Any], name: str) -> Optional[list]:
    value = tags.get(name)
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _first(tags: Dict[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        if name in tags:
            return tags[name]
    return None


# ------------------------------------------------------------------------------- sites
def _element(raw: str, is_label: bool) -> Optional[str]:
    """The element a type symbol (``Fe3+``, ``CA``, ``Fe2``) or, failing that, a label (``O1``,
    ``Fe2a``) names; None when it names none (``OH2``, ``NH4``, ``0.66Mg + 0.32Fe``, ``Xx``)."""
    raw = raw.strip()
    if is_label:
        match = re.match(r"[A-Za-z]+", raw)
        if match is None:
            return None
        letters = match.group(0)
        candidates = [letters[:2].capitalize(), letters[:1].upper()]
    else:
        match = _TYPE_SYMBOL.match(raw)
        if match is None:
            return None
        candidates = [match.group(1).capitalize()]
    for candidate in candidates:
        if candidate == "D":
            return "H"
        if 0 < atomic_numbers.get(candidate, 0) <= _HEAVIEST:
            return candidate
    return None


def _site_table(tags: Dict[str, Any], where: str) -> Optional[List[_Site]]:
    """The listed sites of a block, checked one by one; None when the block lists no sites."""
    fractional = [_column(tags, f"_atom_site_fract_{axis}") for axis in "xyz"]
    cartesian = [_column(tags, f"_atom_site_cartn_{axis}") for axis in "xyz"]
    columns = fractional if None not in fractional else cartesian if None not in cartesian else None
    if columns is None:
        return None
    labels = _column(tags, "_atom_site_label")
    types = _column(tags, "_atom_site_type_symbol")
    count = len(columns[0])
    rows = [[_number(c[k]) for c in columns] for k in range(count)]
    names = [str(labels[k]) if labels is not None and k < len(labels) else f"#{k + 1}" for k in range(count)]
    species = types if types is not None else labels
    if all(None in row for row in rows) and (species is None or all(str(v).strip() in _MISSING for v in species)):
        return None  # a loop of '?' only: the block has no structure
    if labels is None and types is None:
        raise ValueError(f"{where}: no _atom_site_type_symbol or _atom_site_label: the elements are unknown")
    occupancies = _column(tags, "_atom_site_occupancy")
    hydrogens = _column(tags, "_atom_site_attached_hydrogens")
    cell = _cell(tags, where)
    sites = []
    for k in range(count):
        raw = str(types[k]) if types is not None else names[k]
        element = _element(raw, is_label=types is None)
        if element is None:
            shares = re.findall(r"(\d*\.?\d+)\s*([A-Z][a-z]?)", raw)
            if "+" in raw and len(shares) > 1:  # one site written as '0.660Mg + 0.317Fe'
                held = " + ".join(f"{symbol} {float(share):g}" for share, symbol in shares)
                raise ValueError(f"{where}: partial occupancies (mixed occupancy: site {names[k]} holds {held}); only "
                                 f"ordered structures are supported")
            raise ValueError(f"{where}: unknown element {raw!r} (site {names[k]}: the species is not an element)")
        if None in rows[k]:
            raise ValueError(f"{where}: site {names[k]} has no coordinates ({rows[k]})")
        position = np.array(rows[k], dtype=float)
        if columns is cartesian:
            position = np.linalg.solve(cell.T, position)
        occupancy = _number(occupancies[k]) if occupancies is not None and k < len(occupancies) else None
        attached = _number(hydrogens[k]) if hydrogens is not None and k < len(hydrogens) else None
        sites.append(_Site(names[k], element, position, 1.0 if occupancy is None else occupancy,
                           int(round(attached)) if attached else 0))
    return sites


def _cell(tags: Dict[str, Any], where: str) -> np.ndarray:
    values = [_number(tags[t]) if t in tags else None for t in _CELL_TAGS]
    missing = [t for t, v in zip(_CELL_TAGS, values) if v is None]
    if missing:
        raise ValueError(f"{where}: missing lattice (no {', '.join(missing)})")
    from ase.geometry import cellpar_to_cell

    with np.errstate(all="ignore"):
        cell = cellpar_to_cell(values)
    volume = abs(np.linalg.det(cell)) if np.isfinite(cell).all() else 0.0
    if volume < 1e-6 * max(float(np.prod(values[:3])), 1e-6):  # flat or impossible angles
        raise ValueError(f"{where}: degenerate lattice (cell parameters {' '.join(f'{v:g}' for v in values)} give "
                         f"a volume of {volume:.3g} Å^3)")
    return cell


# ------------------------------------------------------------------------------- symmetry
_TERM = re.compile(r"([+-]?)(?:(\d+(?:\.\d*)?(?:/\d+)?|\.\d+)\*?)?([xyz])?")


def _operation(text: str, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """``x' = R x + t`` of an operation such as ``-y+3/4,-x+3/4,-z,+1`` (a magnetic operation's
    time-reversal part, the fourth item, is ignored)."""
    parts = [p.strip().lower().replace(" ", "") for p in str(text).split(",")]
    if len(parts) == 4 and re.fullmatch(r"[+-]?1", parts[3]):
        parts = parts[:3]
    if len(parts) != 3:
        raise ValueError(f"{where}: symmetry operation {text!r} does not have three parts")
    rotation, translation = np.zeros((3, 3)), np.zeros(3)
    for row, part in enumerate(parts):
        position = 0
        while position < len(part):  # one term at a time: linear, whatever the text
            match = _TERM.match(part, position)
            sign, number, axis = match.groups()
            if match.end() == position or not (number or axis):
                raise ValueError(f"{where}: cannot read symmetry operation {text!r}")
            value = float(Fraction(number)) if number else 1.0
            value = -value if sign == "-" else value
            if axis:
                rotation[row, "xyz".index(axis)] += value
            else:
                translation[row] += value
            position = match.end()
        if not part:
            raise ValueError(f"{where}: cannot read symmetry operation {text!r}")
    return rotation, translation


def _operations(tags: Dict[str, Any], where: str) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The block's symmetry operations (identity first when the file lists it)."""
    listed = _first(tags, _OPERATION_TAGS)
    if listed is not None and listed != []:  # an empty loop (GULP writes one): the group's own operations
        operations = [_operation(op, where) for op in (listed if isinstance(listed, list) else [listed])]
        centerings = _first(tags, _CENTERING_TAGS)
        if centerings is not None:
            shifts = [_operation(op, where) for op in (centerings if isinstance(centerings, list) else [centerings])]
            operations = [(rc @ r, rc @ t + tc) for rc, tc in shifts for r, t in operations]
        return operations
    symbol = _first(tags, _SYMBOL_TAGS)
    symbol = None if symbol is None or str(symbol).strip() in _MISSING else str(symbol).strip()
    number = _first(tags, _NUMBER_TAGS)
    number = None if number is None or _number(number) is None else int(_number(number))
    if symbol is not None:
        try:
            from pymatgen.symmetry.groups import SpaceGroup

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                group = SpaceGroup(symbol)
            return [(np.array(op.rotation_matrix, float), np.array(op.translation_vector, float))
                    for op in group.symmetry_ops]
        except Exception:  # pymatgen does not know this spelling; ase may
            pass
        try:
            from ase.spacegroup import Spacegroup

            rotations, translations = Spacegroup(symbol).get_op()
            return list(zip(rotations.astype(float), translations.astype(float)))
        except Exception:  # neither knows it
            if number is None:
                raise ValueError(f"{where}: space group {symbol!r} is not a Hermann-Mauguin symbol pymatgen or "
                                 f"ase knows, and the file lists no symmetry operations") from None
    if number is not None:
        if not 1 <= number <= 230:
            raise ValueError(f"{where}: space group number {number} is not between 1 and 230")
        from ase.spacegroup import Spacegroup

        rotations, translations = Spacegroup(number).get_op()
        return list(zip(rotations.astype(float), translations.astype(float)))
    return [(np.eye(3), np.zeros(3))]


# ------------------------------------------------------------------------------- structure
def _structure(tags: Dict[str, Any], sites: List[_Site], where: str) -> ase.Atoms:
    cell = _cell(tags, where)
    for site in sites:
        if site.hydrogens > 0:
            raise ValueError(f"{where}: site {site.label} ({site.element}) has {site.hydrogens} implicit hydrogen"
                             f"{'s' * (site.hydrogens != 1)} (_atom_site_attached_hydrogens) whose positions are "
                             f"not in the file")
        if site.occupancy > 1 + OCCUPANCY_TOLERANCE:
            raise ValueError(f"{where}: site {site.label} ({site.element}) has occupancy {site.occupancy:g}, above 1")
    operations = _operations(tags, where)
    positions, owner = [], []
    for k, site in enumerate(sites):
        images = np.array([(r @ site.fractional + t) % 1.0 for r, t in operations])
        kept: List[np.ndarray] = []
        for image in images:
            if all(_distance(image, other, cell) >= MERGE_DISTANCE for other in kept):
                kept.append(image)
        positions += kept
        owner += [k] * len(kept)
    fractional, owner_array = np.array(positions), np.array(owner)
    pairs = _close_pairs(fractional, cell, MIN_DISTANCE)
    _refuse_disorder(sites, owner_array, pairs, where)
    if pairs:
        i, j, distance, image = pairs[0]
        a, b = sites[owner_array[i]], sites[owner_array[j]]
        across = " (periodic image)" if image else ""
        if a is b:
            raise ValueError(f"{where}: overlapping atoms at site {a.label} ({a.element}) and its own symmetry image: "
                             f"{distance:.4f} Å apart{across}, closer than {MIN_DISTANCE} Å (a site off a special "
                             f"position, or the wrong space group)")
        raise ValueError(f"{where}: overlapping atoms at sites {a.label} ({a.element}) and {b.label} ({b.element}): "
                         f"{distance:.4f} Å apart{across}, closer than {MIN_DISTANCE} Å")
    numbers = [atomic_numbers[sites[k].element] for k in owner]
    atoms = ase.Atoms(numbers=numbers, cell=cell, pbc=True)
    atoms.set_scaled_positions(fractional)
    return atoms


def _refuse_disorder(sites: List[_Site], owner: np.ndarray, pairs: list, where: str) -> None:
    """Partial or mixed occupancy, named by site and species."""
    partial = [k for k, site in enumerate(sites) if site.occupancy < 1 - OCCUPANCY_TOLERANCE]
    if not partial:
        return
    first = partial[0]
    sharing = {first}
    for i, j, _, _ in pairs:
        a, b = int(owner[i]), int(owner[j])
        if first in (a, b):
            sharing |= {a, b}
    members = [sites[k] for k in sorted(sharing)]
    held = " + ".join(f"{s.element} {s.occupancy:g}" for s in members)
    if len({s.element for s in members}) > 1:
        labels = "/".join(s.label for s in members)
        raise ValueError(f"{where}: partial occupancies (mixed occupancy: sites {labels} share one position: {held}); "
                         f"only ordered structures are supported")
    raise ValueError(f"{where}: partial occupancies (site {sites[first].label} holds {held}); only ordered structures "
                     f"are supported")


def _distance(a: np.ndarray, b: np.ndarray, cell: np.ndarray) -> float:
    """Shortest distance between fractional positions ``a`` and ``b`` over periodic images, Å."""
    delta = (a - b + 0.5) % 1.0 - 0.5
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    return float(np.linalg.norm((delta + shifts) @ cell, axis=1).min())


def _close_pairs(fractional: np.ndarray, cell: np.ndarray, cutoff: float) -> List[Tuple[int, int, float, bool]]:
    """``(i, j, distance, across)`` for every pair of atoms (``i <= j``) closer than ``cutoff`` Å,
    closest first; ``across`` is True when the closest copy of ``j`` is a periodic image."""
    from sciml.graph.neighbors import neighbor_list

    positions = fractional @ cell
    i, j, shifts = neighbor_list(positions, cell, True, cutoff)
    i, j, shifts = i.numpy(), j.numpy(), shifts.numpy()
    found: Dict[Tuple[int, int], Tuple[float, bool]] = {}
    for a, b, shift in zip(i, j, shifts):
        if a > b:
            continue
        distance = float(np.linalg.norm(positions[b] - positions[a] + shift @ cell))
        if distance < found.get((int(a), int(b)), (np.inf, False))[0]:
            found[(int(a), int(b))] = (distance, bool(shift.any()))
    return sorted(((a, b, d, across) for (a, b), (d, across) in found.items()), key=lambda pair: pair[2])


def _describe(err: Exception) -> str:
    reason = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__

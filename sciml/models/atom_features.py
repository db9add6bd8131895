"""CGCNN-style atom features: a 92-dimensional one-hot table per element.

The table has the layout of CGCNN's ``atom_init.json`` (Xie & Grossman, PRL 120, 145301 (2018),
Table S2), which ComFormer and ALIGNN take through jarvis-tools' ``"cgcnn"`` features: nine
properties, each one-hot encoded, concatenated in this order. It is computed here from
pymatgen's element data (covalent radii from ase), not read from CGCNN's file, so individual bins
may differ from that file where the data sources differ; the structure is the same.

=====  ====================  ==================================================  ===============
dims   property              source and unit                                     categories
=====  ====================  ==================================================  ===============
0-18   group                 ``Element.group``; index 0 for the f-block series   0, 1, ..., 18
                             (``Element.block == "f"``: La-Yb, Ac-No)
19-25  period                ``Element.row``                                     1, ..., 7
26-35  electronegativity     ``Element.X``, Pauling                              [0.5, 4.0], 10
36-45  covalent radius       ``ase.data.covalent_radii`` (Cordero 2008), pm      [25, 250], 10
46-57  valence electrons     from ``Element.full_electronic_structure``, below   1, ..., 12
58-67  1st ionization energy ln(``Element.ionization_energies[0]`` / eV)         [1.3, 3.3], 10
68-77  electron affinity     ``Element.electron_affinity``, eV                   [-3.0, 3.7], 10
78-81  block                 ``Element.block``                                   s, p, d, f
82-91  atomic volume         ln(``Element.molar_volume`` / (cm³/mol))            [1.5, 4.3], 10
=====  ====================  ==================================================  ===============

Group and period follow the 92-dimensional ``atom_init.json`` rather than Table S2 (which lists
18 groups and 9 periods and sums to 93): lanthanides and actinides sit in period 6 and 7 and in an
extra group category 0, except Lu and Lr (d-block in pymatgen), which are group 3. He has
pymatgen's block "p" (group 18; CGCNN's source, mendeleev, says "s").

Continuous properties use 10 equal-width bins [low + k w, low + (k + 1) w) on the range given;
values outside the range fall in the first or last bin. Valence electrons, with n the period and
the occupancies of the ground-state configuration: the n s + n p electrons in the s and p blocks;
n s + (n-1) d in the d block (Fe 8, Pd 10, Zn 12); n s + (n-1) d + the (n-2) f electrons beyond a
half-filled shell in the f block (f^k counts k for k <= 7 and k - 7 above): a half-filled f^7
shell acts as core, so the second half of each series repeats the first (Eu 9 and Yb 9, both
divalent-like) instead of running past 12 (Yb would count 16) and all landing in one category.
This f-block count is a choice made here (CGCNN took mendeleev's ``nvalence``); it keeps the rows
of Dy, Ho and Er, identical in every other block, apart.

Missing data: He, Ne and Ar have no Pauling electronegativity; At, Fr and Z >= 100 no molar
volume; covalent radii are used up to Cm (Z = 96), the end of Cordero's table. The block of a
missing property is all zeros for that element; its other blocks are filled. Every element from H
to Bi (Z <= 83) has exactly one hot entry in each block where its data exist, and no two of them
share a row.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import List, Optional, Tuple

import numpy as np
import torch

CGCNN_FEATURE_SIZE = 92

#: (name, number of categories) of each one-hot block, in table order; sizes sum to 92.
CGCNN_BLOCKS: Tuple[Tuple[str, int], ...] = (
    ("group", 19),
    ("period", 7),
    ("electronegativity", 10),
    ("covalent_radius", 10),
    ("valence_electrons", 12),
    ("first_ionization_energy", 10),
    ("electron_affinity", 10),
    ("block", 4),
    ("atomic_volume", 10),
)
#: (low, high) of the 10 equal-width bins of each continuous property, in the units documented above.
_BIN_RANGES = {
    "electronegativity": (0.5, 4.0),
    "covalent_radius": (25.0, 250.0),
    "first_ionization_energy": (1.3, 3.3),
    "electron_affinity": (-3.0, 3.7),
    "atomic_volume": (1.5, 4.3),
}
_ORBITAL_BLOCKS = ("s", "p", "d", "f")
_LAST_COVALENT_RADIUS_Z = 96


def cgcnn_block_slices() -> dict:
    """Column ``slice`` of each one-hot block of :func:`cgcnn_feature_table`, by name."""
    slices, start = {}, 0
    for name, size in CGCNN_BLOCKS:
        slices[name] = slice(start, start + size)
        start += size
    return slices


def cgcnn_feature_table(max_z: int = 100) -> torch.Tensor:
    """CGCNN-style atom features of the elements 1..``max_z``.

    Returns:
        (max_z + 1, 92) float32 tensor; row Z holds element Z's one-hot blocks (see the module
        docstring), row 0 is zeros (padding). A fresh copy of a cached table.

    Raises:
        ValueError: ``max_z`` outside 1..118.
    """
    if not 1 <= max_z <= 118:
        raise ValueError(f"max_z must be in 1..118, got {max_z}")
    return _cached_table(max_z).clone()


@lru_cache(maxsize=None)
def _cached_table(max_z: int) -> torch.Tensor:
    table = np.zeros((max_z + 1, CGCNN_FEATURE_SIZE), dtype=np.float32)
    slices = cgcnn_block_slices()
    for z in range(1, max_z + 1):
        for (name, size), index in zip(CGCNN_BLOCKS, _category_indices(z)):
            if index is not None:
                table[z, slices[name].start + index] = 1.0
    return torch.from_numpy(table)


def _category_indices(z: int) -> List[Optional[int]]:
    """The hot index within each block of element ``z`` (None where data are missing)."""
    from ase.data import covalent_radii
    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about every missing property
        element = Element.from_Z(z)
        block = element.block
        group = 0 if block == "f" else element.group
        period = element.row
        electronegativity = _finite(element.X)
        ionization = element.ionization_energies[0] if element.ionization_energies else None
        affinity = _finite(element.electron_affinity)
        volume = _finite(element.molar_volume)
        configuration = element.full_electronic_structure
    radius = 100.0 * covalent_radii[z] if z <= _LAST_COVALENT_RADIUS_Z else None
    log_ionization = math.log(ionization) if ionization and ionization > 0 else None
    log_volume = math.log(volume) if volume and volume > 0 else None
    return [
        group,
        period - 1 if 1 <= period <= 7 else None,
        _bin("electronegativity", electronegativity),
        _bin("covalent_radius", radius),
        _valence_electrons(configuration, block, period) - 1,
        _bin("first_ionization_energy", log_ionization),
        _bin("electron_affinity", affinity),
        _ORBITAL_BLOCKS.index(block),
        _bin("atomic_volume", log_volume),
    ]


def _valence_electrons(configuration, block: str, period: int) -> int:
    """Valence electrons counted as in the module docstring from [(n, l, occupancy), ...].

    The outermost shell is the period, not the largest n occupied: Pd (4d10 5s0) counts 5s + 4d.
    """
    outer = period
    counted = {"s": {(outer, "s"), (outer, "p")},
               "p": {(outer, "s"), (outer, "p")},
               "d": {(outer, "s"), (outer - 1, "d")},
               "f": {(outer, "s"), (outer - 1, "d"), (outer - 2, "f")}}[block]
    total = 0
    for n, l, occupancy in configuration:
        if (n, l) in counted:
            total += int(occupancy) - 7 if l == "f" and occupancy > 7 else int(occupancy)
    return total


def _bin(name: str, value: Optional[float]) -> Optional[int]:
    if value is None:
        return None
    low, high = _BIN_RANGES[name]
    # rounded first so that a value on an edge (Pauling 1.2 = 0.5 + 2 * 0.35) lands in the bin it
    # starts rather than the one below, whatever the float error of the division
    return int(np.clip(math.floor(round((value - low) / (high - low) * 10, 9)), 0, 9))


def _finite(value) -> Optional[float]:
    """A float from pymatgen's plain or unit-carrying values; None for missing or NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None

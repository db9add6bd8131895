"""Crystal property datasets: JARVIS-DFT, MatBench, Materials Project and CIF files.

Every reader returns :class:`CrystalRecord` objects (id, periodic ``ase.Atoms``, scalar targets
with None for missing values) after the same structural checks (:func:`check_crystal`); a bad
structure raises :class:`CrystalInputError` naming the file and record, or is skipped and
reported with ``skip_bad=True``. For training, :func:`read_crystal_dataset` gives ``ase.Atoms``
carrying ``info[target]`` and ``info["id"]``::

    from sciml.data.crystals import alignn_split, read_crystal_dataset

    atoms = read_crystal_dataset("jdft_3d-8-18-2021.json.zip", target="formation_energy_peratom")
    split = alignn_split(len(atoms))                     # ALIGNN / ComFormer 80/10/10, seed 123
    train = [atoms[i] for i in split["train"]]

Modules: ``records`` (the record), ``validation`` (checks and the error), ``jarvis``,
``matbench`` (task files and official folds), ``materials_project``, ``cif`` (validated CIF
reading), ``sources`` (format detection, dispatcher). The ALIGNN split and split files are in
:mod:`sciml.data.splits` (imported here too).
"""

from sciml.data.crystals.cif import cif_text_to_atoms, read_cif, read_crystal_files
from sciml.data.crystals.jarvis import read_jarvis, write_jarvis
from sciml.data.crystals.matbench import (
    MATBENCH_STRATIFIED_TASKS,
    matbench_folds,
    matbench_ids,
    official_matbench_folds,
    read_matbench,
    write_matbench,
)
from sciml.data.crystals.materials_project import (
    read_materials_project,
    read_target_table,
)
from sciml.data.crystals.records import CrystalRecord, records_to_atoms
from sciml.data.crystals.sources import (
    detect_crystal_format,
    read_crystal_dataset,
    read_crystal_records,
)
from sciml.data.splits import (
    alignn_split,
    load_split,
    save_split,
    select_split,
)
from sciml.data.crystals.validation import (
    MIN_DISTANCE,
    CrystalInputError,
    check_crystal,
)

__all__ = [
    "MATBENCH_STRATIFIED_TASKS",
    "MIN_DISTANCE",
    "CrystalInputError",
    "CrystalRecord",
    "alignn_split",
    "check_crystal",
    "cif_text_to_atoms",
    "detect_crystal_format",
    "load_split",
    "matbench_folds",
    "matbench_ids",
    "official_matbench_folds",
    "read_cif",
    "read_crystal_dataset",
    "read_crystal_files",
    "read_crystal_records",
    "read_jarvis",
    "read_matbench",
    "read_materials_project",
    "read_target_table",
    "records_to_atoms",
    "save_split",
    "select_split",
    "write_jarvis",
    "write_matbench",
]

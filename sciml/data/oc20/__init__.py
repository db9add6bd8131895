"""Open Catalyst 2020 (OC20) data: readers, a fast LMDB cache and an EMT generator.

Every reader yields *records* (dicts of numpy arrays, see :mod:`sciml.data.oc20.records`) that
become :class:`~sciml.graph.atomic_graph.AtomicGraph` objects with :func:`graph_from_record`::

    from sciml.data.oc20 import CachedDataset, load_graphs, preprocess

    graphs = load_graphs("s2ef_train_200K/", cutoff=6.0)        # S2EF *.extxyz.xz + *.txt
    preprocess("is2re/all/train/data.lmdb", "is2re_train.lmdb")  # fairchem LMDB -> sciml cache
    dataset = CachedDataset("is2re_train.lmdb", cutoff=6.0, max_neighbors=50)

Modules: ``records`` (the record and its graph), ``s2ef_extxyz``, ``ase_db`` and
``legacy_lmdb`` (the public formats), ``cache`` (the sciml cache), ``sources`` (format
detection, iteration, caching), ``emt_adsorption`` (OC20-like EMT data). Each format's module
registers it in :mod:`sciml.data.formats`. The OC20 metrics are in :mod:`sciml.tasks.oc20_metrics`.
"""

from sciml.data.oc20.ase_db import read_ase_db, write_ase_db
from sciml.data.oc20.cache import CachedDataset, read_cache_metadata, write_cache
from sciml.data.oc20.emt_adsorption import (
    AdsorptionRelaxation,
    is2re_records,
    relax_adsorbates,
    s2ef_records,
    write_oc20_dataset,
)
from sciml.data.oc20.legacy_lmdb import LegacyLmdb, RestrictedUnpickler, write_legacy_lmdb
from sciml.data.oc20.records import FIELDS, Record, check_record, graph_from_record
from sciml.data.oc20.s2ef_extxyz import read_s2ef_extxyz, write_s2ef_extxyz
from sciml.data.oc20.sources import detect_format, iter_records, load_graphs, preprocess

__all__ = [
    "FIELDS",
    "AdsorptionRelaxation",
    "CachedDataset",
    "LegacyLmdb",
    "Record",
    "RestrictedUnpickler",
    "check_record",
    "detect_format",
    "graph_from_record",
    "is2re_records",
    "iter_records",
    "load_graphs",
    "preprocess",
    "read_ase_db",
    "read_cache_metadata",
    "read_s2ef_extxyz",
    "relax_adsorbates",
    "s2ef_records",
    "write_ase_db",
    "write_cache",
    "write_legacy_lmdb",
    "write_oc20_dataset",
    "write_s2ef_extxyz",
]

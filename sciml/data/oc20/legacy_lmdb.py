"""fairchem's legacy LMDB files (OC20 S2EF/IS2RE/IS2RS), read without torch_geometric.

Layout (fairchem <= 1.x ``LmdbDataset``): one ``.lmdb`` file (``subdir=False``) or a folder of
``*.lmdb`` shards read in sorted order; keys ``b"0"`` .. ``b"N-1"``, each value a pickled
``torch_geometric.data.Data``, plus an optional ``b"length"`` (pickled int), which counts
the records when present. A ``Data`` pickled by PyG 1.x keeps its fields in ``__dict__``; one
pickled by PyG 2.x keeps them in ``_store`` (a ``GlobalStorage``) under ``_mapping``.

Values are unpickled by :class:`RestrictedUnpickler`: ``torch_geometric`` classes become inert
stand-ins and only the globals needed to rebuild torch tensors and numpy arrays are allowed, so
a record cannot run code. Tensor storages are loaded with ``torch.load(weights_only=True)``.

Field names (fairchem -> record): ``pos`` -> positions, ``cell`` (1, 3, 3) -> cell (3, 3),
``atomic_numbers`` (float or uint8 in the files) -> int64, ``tags``, ``fixed`` (int 0/1) ->
bool, ``y`` or ``energy`` -> energy, ``force`` or ``forces`` -> forces, ``sid``, ``fid``,
``y_init`` -> initial_energy, ``y_relaxed`` -> relaxed_energy, ``pos_relaxed`` ->
relaxed_positions, ``pbc`` when stored (else all True). Stored edges (``edge_index``,
``cell_offsets``, ``distances``, ...) are not kept: sciml builds its own graphs.
"""

from __future__ import annotations

import bisect
import codecs
import collections
import io
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from sciml.data.formats import OC20, DataFormat, register_format
from sciml.data.oc20._lmdb import environment, is_lmdb_file, write_lmdb
from sciml.data.oc20.records import Record, check_record

try:  # numpy >= 2 keeps these in numpy._core; pickles from numpy 1 name numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

_LENGTH_KEY = b"length"
# record field <- fairchem names, first present wins
_RENAMES: Dict[str, Tuple[str, ...]] = {
    "positions": ("pos",),
    "atomic_numbers": ("atomic_numbers",),
    "cell": ("cell",),
    "pbc": ("pbc",),
    "tags": ("tags",),
    "fixed": ("fixed",),
    "energy": ("energy", "y"),
    "forces": ("forces", "force"),
    "sid": ("sid",),
    "fid": ("fid",),
    "initial_energy": ("y_init",),
    "relaxed_energy": ("y_relaxed",),
    "relaxed_positions": ("pos_relaxed",),
}


def _load_storage(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` without arbitrary code: a weights-only ``torch.load``."""
    return torch.load(io.BytesIO(data), weights_only=True)


class PickledObject:
    """Inert stand-in for any ``torch_geometric`` class met while unpickling.

    Keeps the constructor arguments (``args``) and the pickled state (``state``) and nothing else.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


_ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{core}.multiarray", name): getattr(_multiarray, name)
       for core in ("core", "_core") for name in ("_reconstruct", "scalar")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _numeric._frombuffer for core in ("core", "_core")},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles fairchem LMDB values: PyG classes become :class:`PickledObject`, torch tensors
    and numpy arrays are rebuilt, and any other global raises ``pickle.UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch_geometric" or module.startswith("torch_geometric."):
            return PickledObject
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name} (only torch_geometric data, torch tensors and numpy "
                f"arrays are allowed)")
        return allowed


def restricted_loads(data: bytes) -> Any:
    """``pickle.loads`` through :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()


def data_fields(obj: Any) -> Dict[str, Any]:
    """The fields of an unpickled ``Data`` (PyG 1.x or 2.x) or of a plain dict, Nones dropped."""
    if isinstance(obj, PickledObject):
        state = getattr(obj, "state", {})
        if isinstance(state, tuple):  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise ValueError(f"unexpected pickled Data state of type {type(state).__name__}")
        store = state.get("_store")
        if store is not None:  # PyG 2.x: GlobalStorage._mapping holds the fields
            mapping = getattr(store, "state", {}).get("_mapping") if isinstance(store, PickledObject) else None
            if not isinstance(mapping, dict):
                raise ValueError("pickled PyG 2.x Data has no _store._mapping")
            state = mapping
        return {k: v for k, v in state.items() if v is not None and not k.startswith("_")}
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if v is not None}
    raise ValueError(f"expected a pickled torch_geometric Data, got {type(obj).__name__}")


def record_from_fields(fields: Dict[str, Any]) -> Record:
    """A record from fairchem field names (see the module docstring); unknown fields are dropped."""
    record: Record = {}
    for name, sources in _RENAMES.items():
        source = next((s for s in sources if s in fields), None)
        if source is None:
            continue
        value = fields[source]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if name == "cell":
            array = array.reshape(3, 3) if array.size == 9 else array
        elif name in ("atomic_numbers", "tags", "sid", "fid"):
            if array.dtype.kind not in "biuf" or (array.dtype.kind == "f" and not np.all(array == np.round(array))):
                raise ValueError(f"{source} must hold integers, got {array.dtype} values")
            array = array.astype(np.int64)
        elif name in ("fixed", "pbc"):
            array = array.astype(bool)
        elif name in ("energy", "initial_energy", "relaxed_energy"):
            array = array.reshape(()) if array.size == 1 else array
        record[name] = array
    if "positions" in record:
        n = record["positions"].shape[0]
        record.setdefault("tags", np.zeros(n, dtype=np.int64))
        record.setdefault("fixed", np.zeros(n, dtype=bool))
        record.setdefault("pbc", np.ones(3, dtype=bool))
        natoms = fields.get("natoms")
        if natoms is not None and int(natoms) != n:
            raise ValueError(f"natoms is {int(natoms)} but pos has {n} rows")
    return record


class LegacyLmdb:
    """Random access to the records of a fairchem LMDB file or folder of ``*.lmdb`` shards.

    ``len(db)`` records; ``db[i]`` is record ``i`` (shards concatenated in sorted name order).
    Each process opens the files on first access, read-only and without locks, so one object can
    be shared by DataLoader workers.

    Raises:
        ValueError: a missing path, a folder without ``*.lmdb`` files, a file that is not an
            LMDB; on access, a missing or corrupted record, a pickled global that is not allowed,
            or missing fields (the message names the file and the record).
    """

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"{self.path}: no such file or directory")
        self.shards: List[Path] = sorted(self.path.glob("*.lmdb")) if self.path.is_dir() else [self.path]
        if not self.shards:
            raise ValueError(f"{self.path}: no *.lmdb files in this directory")
        lengths = []
        for shard in self.shards:
            env = environment(shard)
            with env.begin() as txn:
                raw = txn.get(_LENGTH_KEY)
            lengths.append(self._length(shard, raw, env.stat()["entries"]))
        self._ends = np.cumsum(lengths).tolist()

    @staticmethod
    def _length(shard: Path, raw: Optional[bytes], entries: int) -> int:
        if raw is None:
            return entries
        try:
            length = restricted_loads(raw)
        except Exception as err:
            raise ValueError(f"{shard}: corrupted 'length' entry ({type(err).__name__}: {err})") from None
        if not isinstance(length, int) or not 0 <= length < entries:
            raise ValueError(f"{shard}: 'length' entry says {length!r} but the file holds {entries - 1} records")
        return length

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int) -> Record:
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records in {self.path}")
        index %= len(self)
        shard = bisect.bisect_right(self._ends, index)
        start = self._ends[shard - 1] if shard else 0
        local = index - start
        where = f"{self.shards[shard]}: record {local}"
        with environment(self.shards[shard]).begin() as txn:
            raw = txn.get(str(local).encode("ascii"))
        if raw is None:
            raise ValueError(f"{where}: missing (the file should hold records 0..{self._ends[shard] - start - 1})")
        try:
            obj = restricted_loads(raw)
        except pickle.UnpicklingError as err:
            if str(err).startswith("refusing"):
                raise ValueError(f"{where}: {err}") from None
            raise ValueError(f"{where}: corrupted record ({err})") from None
        except Exception as err:  # truncated or garbled bytes raise many types
            raise ValueError(f"{where}: corrupted record ({type(err).__name__}: {err})") from None
        try:
            return check_record(record_from_fields(data_fields(obj)), where)
        except ValueError as err:
            message = str(err)
            raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None

    def __iter__(self) -> Iterator[Record]:
        for index in range(len(self)):
            yield self[index]


# ----------------------------------------------------------------------------- writing


def _stand_in(module: str, qualname: str) -> type:
    """A plain class that pickles under the name ``module.qualname`` (see :class:`_NamedPickler`)."""
    return type(qualname, (), {"__module__": module, "__qualname__": qualname})


_PYG_DATA = _stand_in("torch_geometric.data.data", "Data")
_PYG_GLOBAL_STORAGE = _stand_in("torch_geometric.data.storage", "GlobalStorage")
_PYG_TENSOR_ATTR = _stand_in("torch_geometric.data.data", "DataTensorAttr")
_PYG_EDGE_ATTR = _stand_in("torch_geometric.data.data", "DataEdgeAttr")
_STAND_INS = (_PYG_DATA, _PYG_GLOBAL_STORAGE, _PYG_TENSOR_ATTR, _PYG_EDGE_ATTR)


class _NamedPickler(pickle._Pickler):  # the Python pickler: its save_global can be overridden
    """Writes the stand-in classes by their declared names, without importing torch_geometric."""

    def save_global(self, obj: Any, name: Optional[str] = None) -> None:
        if any(obj is cls for cls in _STAND_INS):
            self.write(pickle.GLOBAL + f"{obj.__module__}\n{obj.__qualname__}\n".encode("ascii"))
            self.memoize(obj)
            return
        super().save_global(obj, name)


def pyg_data_pickle(fields: Dict[str, Any], pyg_version: int = 2) -> bytes:
    """Pickle ``fields`` as a ``torch_geometric.data.data.Data`` of PyG 1.x or 2.x would pickle.

    PyG 1.x: the fields (with PyG's unset defaults as None) in the object's ``__dict__``. PyG 2.x:
    ``__dict__`` holds ``_store``, a ``GlobalStorage`` whose ``_mapping`` holds the fields, and
    the attribute classes of PyG's feature and graph stores.
    """
    data = _PYG_DATA.__new__(_PYG_DATA)
    if pyg_version == 1:
        defaults = dict.fromkeys(("x", "edge_index", "edge_attr", "y", "pos", "normal", "face", "__num_nodes__"))
        data.__dict__.update({**defaults, **fields})
    elif pyg_version == 2:
        store = _PYG_GLOBAL_STORAGE.__new__(_PYG_GLOBAL_STORAGE)
        store.__dict__.update({"_mapping": dict(fields), "_parent": data})
        data.__dict__.update({"_store": store, "_tensor_attr_cls": _PYG_TENSOR_ATTR, "_edge_attr_cls": _PYG_EDGE_ATTR})
    else:
        raise ValueError(f"pyg_version must be 1 or 2, got {pyg_version!r}")
    buffer = io.BytesIO()
    _NamedPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(data)
    return buffer.getvalue()


def fairchem_fields(record: Record, pyg_version: int = 2) -> Dict[str, Any]:
    """The fields fairchem's preprocessing stores for a record, as torch tensors and numbers.

    PyG 1.x-era files (``pyg_version=1``) hold float atomic numbers, ``y`` and ``force``; later
    ones uint8 atomic numbers, ``energy`` and ``forces``. IS2RE fields are ``y_init``,
    ``y_relaxed`` and ``pos_relaxed``.
    """
    n = record["positions"].shape[0]
    fields: Dict[str, Any] = {
        "pos": torch.from_numpy(np.asarray(record["positions"], dtype=np.float32)),
        "cell": torch.from_numpy(np.asarray(record["cell"], dtype=np.float32).reshape(1, 3, 3)),
        "atomic_numbers": torch.from_numpy(record["atomic_numbers"].astype(np.float32 if pyg_version == 1 else np.uint8)),
        "natoms": n,
        "tags": torch.from_numpy(record["tags"].astype(np.int64)),
        "fixed": torch.from_numpy(record["fixed"].astype(np.int32)),
    }
    for name, key in (("sid", "sid"), ("fid", "fid")):
        if name in record:
            fields[key] = int(record[name])
    if "energy" in record:
        fields["y" if pyg_version == 1 else "energy"] = float(record["energy"])
    if "forces" in record:
        fields["force" if pyg_version == 1 else "forces"] = torch.from_numpy(np.asarray(record["forces"], dtype=np.float32))
    for name, key in (("initial_energy", "y_init"), ("relaxed_energy", "y_relaxed")):
        if name in record:
            fields[key] = float(record[name])
    if "relaxed_positions" in record:
        fields["pos_relaxed"] = torch.from_numpy(np.asarray(record["relaxed_positions"], dtype=np.float32))
    return fields


def write_legacy_lmdb(path: Union[str, os.PathLike], records: Iterable[Record], pyg_version: int = 2) -> int:
    """Write records as a fairchem legacy LMDB (keys ``b"0"``.., pickled PyG ``Data``, ``b"length"``).

    Positions, cells and forces are stored as float32 tensors, as fairchem does. Returns the
    number of records; the file is written atomically.
    """
    count = 0

    def items() -> Iterator[Tuple[bytes, bytes]]:
        nonlocal count
        for record in records:
            yield str(count).encode("ascii"), pyg_data_pickle(fairchem_fields(record, pyg_version), pyg_version)
            count += 1
        yield _LENGTH_KEY, pickle.dumps(count, protocol=pickle.HIGHEST_PROTOCOL)

    write_lmdb(path, items())
    return count


def read_legacy_lmdb(source: Union[str, os.PathLike], subtract_reference: bool = True) -> Iterator[Record]:
    """The records of a fairchem LMDB file or folder, in order (their energies as written:
    ``subtract_reference`` does not apply)."""
    yield from LegacyLmdb(source)


def is_legacy_lmdb(path: Path) -> bool:
    """A folder of ``*.lmdb`` shards (and no S2EF trajectories), or an LMDB file that is no sciml cache."""
    from sciml.data.oc20.cache import read_cache_metadata

    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        return any(n.endswith(".lmdb") for n in names) and not any(n.endswith((".extxyz.xz", ".extxyz")) for n in names)
    return is_lmdb_file(path) and read_cache_metadata(path) is None


register_format(DataFormat(
    name="legacy-lmdb", kind=OC20, read=read_legacy_lmdb, detect=is_legacy_lmdb, auto_detect=True,
    description="a fairchem *.lmdb file or a directory of *.lmdb shards"))

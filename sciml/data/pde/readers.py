"""Readers of the public PDE dataset files: FNO's ``.mat`` files and PDEBench's HDF5 files.

Layouts (checked against the generating code of each project):

- FNO Navier-Stokes (``ns_V1e-3_N5000_T50.mat``, ``ns_V1e-4_N10000_T30.mat``): ``u`` ``(N, X, Y, T)``
  vorticity snapshots, ``a`` ``(N, X, Y)`` initial vorticity, ``t`` ``(1, T)``. Small files are
  MATLAB v5 (``scipy.io.savemat``); large ones MATLAB v7.3, i.e. HDF5 with every array stored with
  its axes reversed (``u`` as ``(T, Y, X, N)``), which the reader undoes.
- PDEBench 2D incompressible NS (``ns_incom_inhom_2d_512-*.h5``): ``velocity`` ``(N, T, X, Y, 2)``,
  ``particles`` ``(N, T, X, Y, 1)`` (a passive tracer), ``force`` ``(N, X, Y, 2)``, ``t`` ``(N, T)``;
  no coordinates are stored (the phiflow domain is the box ``[0, X] x [0, Y]``, cell centred).
- PDEBench shallow-water radial dam break (``2D_rdb_NA_NA.h5``) and 2D diffusion-reaction
  (``2D_diff-react_NA_NA.h5``): one group per sample (``"0000"``, ``"0001"``, ...) holding ``data``
  ``(T, X, Y, C)`` and ``grid/x``, ``grid/y``, ``grid/t``. The diffusion-reaction generator writes
  its spatial axes as ``(y, x)`` (a row-major reshape of an x-fastest vector); the reader swaps
  them so that axis 1 follows ``grid/x``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from sciml.data.formats import FIELDS, DataFormat, register_format
from sciml.io.files import atomic_path

PathLike = str | os.PathLike
PDEBenchKind = Literal["incompressible-ns", "shallow-water", "diffusion-reaction"]
PDEBENCH_KINDS = ("incompressible-ns", "shallow-water", "diffusion-reaction")
_FNO_RANKS = {"u": 4, "a": 3}
_SAMPLE_VARIABLES = {"shallow-water": ("h",), "diffusion-reaction": ("u", "v")}


class PDEDataError(ValueError):
    """A PDE data file is missing, unreadable or not in the expected layout."""


@dataclass(frozen=True)
class PDEFields:
    """Fields of ``N`` samples on an ``X x Y`` grid at ``T`` times, with ``C`` variables.

    Attributes:
        fields: ``(N, X, Y, T, C)`` float32.
        x, y: ``(X,)`` and ``(Y,)`` grid coordinates; t: ``(T,)`` times (the dataset's units).
        variables: names of the ``C`` channels, e.g. ``("vx", "vy", "particles")``.
        static: per-sample fields constant in time, e.g. ``{"force": (N, X, Y, 2)}``.
    """

    fields: np.ndarray
    x: np.ndarray
    y: np.ndarray
    t: np.ndarray
    variables: tuple[str, ...]
    static: dict[str, np.ndarray] = field(default_factory=dict)


def _h5py():
    import h5py

    return h5py


def _check_finite(path: Path, name: str, array: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise PDEDataError(f"{path}: '{name}' contains {bad} NaN or infinite values")


def _check_rank(path: Path, name: str, array: np.ndarray, rank: int, layout: str) -> None:
    if array.ndim != rank:
        raise PDEDataError(f"{path}: '{name}' has shape {array.shape}, expected rank {rank} {layout}")


def _check_square(path: Path, name: str, nx: int, ny: int) -> None:
    if nx != ny:
        raise PDEDataError(f"{path}: '{name}' is on a {nx} x {ny} grid; a square grid is required")


def _existing(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise PDEDataError(f"{path}: no such file")
    return path


def read_fno_mat(path: PathLike, key: str = "u", require_square: bool = True) -> np.ndarray:
    """One array of an FNO ``.mat`` file, MATLAB v5 or v7.3, in the v5 axis order.

    Args:
        path: the ``.mat`` file.
        key: ``"u"`` gives ``(N, X, Y, T)``, ``"a"`` ``(N, X, Y)``, ``"t"`` ``(T,)``; any other key is
            returned with the axes MATLAB shows.
        require_square: for ``u`` and ``a``, refuse ``X != Y``.

    Raises:
        PDEDataError: missing or unreadable file, missing key, wrong rank, non-square grid, NaNs.
    """
    path = _existing(path)
    h5py = _h5py()
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as handle:
            if key not in handle or not isinstance(handle[key], h5py.Dataset):
                raise PDEDataError(f"{path}: no array '{key}' in this MATLAB v7.3 file (has {sorted(handle)})")
            array = handle[key][()]
        array = np.transpose(array, tuple(range(array.ndim - 1, -1, -1)))
    else:
        import scipy.io

        try:
            content = scipy.io.loadmat(path)
        except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as err:
            raise PDEDataError(f"{path}: not a MATLAB v5 or v7.3 file ({type(err).__name__}: {err})") from None
        if key not in content:
            names = sorted(k for k in content if not k.startswith("__"))
            raise PDEDataError(f"{path}: no array '{key}' in this MATLAB v5 file (has {names})")
        array = content[key]
    array = np.asarray(array, dtype=np.float32)
    if key == "t":
        array = array.reshape(-1)
    elif key in _FNO_RANKS:
        _check_rank(path, key, array, _FNO_RANKS[key], "(N, X, Y, T)" if key == "u" else "(N, X, Y)")
        if require_square:
            _check_square(path, key, array.shape[1], array.shape[2])
    _check_finite(path, key, array)
    return array


def write_fno_mat(path: PathLike, u: np.ndarray, a: np.ndarray, t: np.ndarray) -> Path:
    """Write ``u`` ``(N, X, Y, T)``, ``a`` ``(N, X, Y)`` and ``t`` ``(T,)`` as an FNO-style MATLAB v5 file.

    The file appears only once complete (written next to ``path``, then renamed). MATLAB v5 holds
    arrays below 2 GiB; larger sets need splitting.
    """
    import scipy.io

    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        scipy.io.savemat(stream, {"a": np.asarray(a), "u": np.asarray(u), "t": np.asarray(t).reshape(1, -1)})
    return path


def read_pdebench(
    path: PathLike, kind: PDEBenchKind, max_samples: int | None = None, require_square: bool = False
) -> PDEFields:
    """Read a PDEBench 2D HDF5 file into :class:`PDEFields` (layouts in the module docstring).

    Args:
        path: the ``.h5`` file.
        kind: ``"incompressible-ns"`` (variables vx, vy, particles; ``static["force"]``),
            ``"shallow-water"`` (h) or ``"diffusion-reaction"`` (u, v).
        max_samples: read only the first samples (the published files hold 1000 to 10000).
        require_square: refuse ``X != Y``.

    Raises:
        PDEDataError: missing or unreadable file, missing keys, wrong ranks or inconsistent shapes,
            non-square grid (when required), NaNs.
    """
    if kind not in PDEBENCH_KINDS:
        raise ValueError(f"unknown PDEBench kind {kind!r}; choose one of {', '.join(PDEBENCH_KINDS)}")
    path = _existing(path)
    h5py = _h5py()
    if not h5py.is_hdf5(path):
        raise PDEDataError(f"{path}: not an HDF5 file")
    count = slice(None) if max_samples is None else slice(0, max_samples)
    with h5py.File(path, "r") as handle:
        if kind == "incompressible-ns":
            data = _read_incompressible_ns(path, handle, count)
        else:
            data = _read_sample_groups(path, handle, count, kind)
    if require_square:
        _check_square(path, "fields", data.fields.shape[1], data.fields.shape[2])
    _check_finite(path, "fields", data.fields)
    return data


def _read_incompressible_ns(path: Path, handle, count: slice) -> PDEFields:
    missing = [k for k in ("velocity", "particles", "force", "t") if k not in handle]
    if missing:
        raise PDEDataError(f"{path}: missing {missing}; a PDEBench incompressible NS file has velocity, "
                           f"particles, force and t")
    velocity = np.asarray(handle["velocity"][count], dtype=np.float32)
    particles = np.asarray(handle["particles"][count], dtype=np.float32)
    force = np.asarray(handle["force"][count], dtype=np.float32)
    t = np.asarray(handle["t"][count], dtype=np.float64)
    _check_rank(path, "velocity", velocity, 5, "(N, T, X, Y, 2)")
    _check_rank(path, "particles", particles, 5, "(N, T, X, Y, 1)")
    _check_rank(path, "force", force, 4, "(N, X, Y, 2)")
    _check_rank(path, "t", t, 2, "(N, T)")
    if particles.shape[:4] != velocity.shape[:4] or t.shape != velocity.shape[:2] or force.shape[:3] != (
            velocity.shape[0], *velocity.shape[2:4]):
        raise PDEDataError(f"{path}: inconsistent shapes velocity {velocity.shape}, particles {particles.shape}, "
                           f"force {force.shape}, t {t.shape}")
    if not np.allclose(t, t[:1]):
        raise PDEDataError(f"{path}: samples are recorded at different times ('t' rows differ)")
    fields = np.concatenate([velocity, particles], axis=-1).transpose(0, 2, 3, 1, 4)
    _check_finite(path, "force", force)
    nx, ny = fields.shape[1:3]
    return PDEFields(fields=np.ascontiguousarray(fields), x=np.arange(nx) + 0.5, y=np.arange(ny) + 0.5,
                     t=t[0], variables=("vx", "vy", "particles"), static={"force": force})


def _read_sample_groups(path: Path, handle, count: slice, kind: str) -> PDEFields:
    names = sorted(k for k in handle if isinstance(handle[k], _h5py().Group))[count]
    if not names:
        raise PDEDataError(f"{path}: no sample groups ('0000', ...) in this file (has {sorted(handle)})")
    first = handle[names[0]]
    missing = [k for k in ("data", "grid/x", "grid/y", "grid/t") if k not in first]
    if missing:
        raise PDEDataError(f"{path}: sample '{names[0]}' lacks {missing}; a PDEBench {kind} sample has data, "
                           f"grid/x, grid/y and grid/t")
    samples = []
    for name in names:
        if "data" not in handle[name]:
            raise PDEDataError(f"{path}: sample '{name}' has no 'data'")
        data = np.asarray(handle[name]["data"], dtype=np.float32)
        _check_rank(path, f"{name}/data", data, 4, "(T, X, Y, C)")
        if samples and data.shape != samples[0].shape:
            raise PDEDataError(f"{path}: '{name}/data' has shape {data.shape}, sample '{names[0]}' {samples[0].shape}")
        samples.append(data)
    fields = np.stack(samples)  # (N, T, a, b, C)
    fields = fields.transpose(0, 3, 2, 1, 4) if kind == "diffusion-reaction" else fields.transpose(0, 2, 3, 1, 4)
    x, y, t = (np.asarray(first["grid"][k], dtype=np.float64) for k in ("x", "y", "t"))
    variables = _SAMPLE_VARIABLES[kind]
    if fields.shape[1:] != (len(x), len(y), len(t), len(variables)):
        raise PDEDataError(f"{path}: 'data' of shape {samples[0].shape} does not match grid x {len(x)}, "
                           f"y {len(y)}, t {len(t)} and {len(variables)} variable(s) {variables}")
    return PDEFields(fields=np.ascontiguousarray(fields), x=x, y=y, t=t, variables=variables)


def read_fno_fields(path: PathLike, key: str = "u", kind: str | None = None, channel: int = 0) -> np.ndarray:
    """The ``fno_mat`` format's reader: trajectories ``(N, X, Y, T)`` of array ``key`` of an FNO
    ``.mat`` file (``kind`` and ``channel`` do not apply)."""
    return read_fno_mat(path, key=key)


def read_pdebench_fields(path: PathLike, key: str = "u", kind: str | None = None, channel: int = 0) -> np.ndarray:
    """The ``pdebench`` format's reader: trajectories ``(N, X, Y, T)`` of variable number
    ``channel`` of a PDEBench file of ``kind`` (``key`` does not apply).

    Raises:
        ValueError: no ``kind``, or a ``channel`` the file does not have.
    """
    if kind is None:
        raise ValueError("data.format pdebench needs fields.kind (incompressible-ns, shallow-water, diffusion-reaction)")
    data = read_pdebench(path, kind)
    if not 0 <= channel < data.fields.shape[-1]:
        raise ValueError(f"{path}: fields.channel {channel} is not one of the {data.fields.shape[-1]} variables "
                         f"{data.variables}")
    return data.fields[..., channel]


register_format(DataFormat(name="fno_mat", kind=FIELDS, read=read_fno_fields,
                           detect=lambda path: path.is_file() and path.suffix.lower() == ".mat",
                           description="an FNO .mat file (MATLAB v5 or v7.3), trajectories u (N, X, Y, T)"))
register_format(DataFormat(name="pdebench", kind=FIELDS, read=read_pdebench_fields,
                           detect=lambda path: path.is_file() and path.suffix.lower() in (".h5", ".hdf5"),
                           description="a PDEBench 2D HDF5 file"))

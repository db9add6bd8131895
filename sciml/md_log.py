"""Streaming MD output: trajectory frames appended (and flushed) one at a time, a plain-text log, and
reading back the last complete frame of a trajectory for ``--restart``.

Everything here keeps memory flat in the number of steps: nothing is accumulated per frame.

Log format (one header line, then one whitespace-separated row per logged step)::

    time_fs step epot_eV ekin_eV etot_eV temperature_K [pressure_GPa volume_A3]

``pressure_GPa`` (from the stress, ideal-gas term included) and ``volume_A3`` are written only for
structures periodic in all three directions.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Dict, Optional, Tuple

import numpy as np

ENSEMBLES = ("nve", "langevin", "nvt-bussi", "nose-hoover", "npt", "npt-berendsen")
TRAJECTORY_SUFFIXES = (".extxyz", ".xyz", ".traj")
LOG_COLUMNS = ("time_fs", "step", "epot_eV", "ekin_eV", "etot_eV", "temperature_K")
PERIODIC_COLUMNS = ("pressure_GPa", "volume_A3")


def check_trajectory_path(path: Path) -> None:
    """Raise ValueError unless ``path`` ends in .extxyz, .xyz (both written as extxyz) or .traj."""
    if path.suffix.lower() not in TRAJECTORY_SUFFIXES:
        raise ValueError(f"trajectory {path}: use a .extxyz, .xyz or .traj file name")


def frame_snapshot(atoms, step: int, time_fs: float, temperature_K: float, stress: Optional[np.ndarray]):
    """A calculator-free copy of ``atoms`` carrying only the state of this step.

    Positions, cell, pbc, tags, momenta and constraints (written by extxyz as ``move_mask``);
    ``info`` holds fresh ``step``, ``time_fs`` (fs), ``temperature_K`` (K), ``energy`` (eV) and, when
    given, ``stress`` (eV/Å³, Voigt), and ``arrays['forces']`` the forces (eV/Å): ase's extxyz reader
    turns these back into calculator results. Nothing of the input's info (e.g. a stale ``time_fs``)
    is carried over. No calculator is attached (a single-point calculator copies the atoms again).
    """
    from ase import Atoms

    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc,
                  tags=atoms.get_tags() if atoms.has("tags") else None, momenta=atoms.get_momenta(),
                  constraint=[c.copy() for c in atoms.constraints])
    if atoms.has("masses"):
        frame.set_masses(atoms.get_masses())
    frame.info = {"step": int(step), "time_fs": float(time_fs), "temperature_K": float(temperature_K),
                  "energy": float(atoms.get_potential_energy())}
    if stress is not None:
        frame.info["stress"] = np.asarray(stress, dtype=float)
    frame.arrays["forces"] = np.array(atoms.get_forces(), dtype=float)
    return frame


def _with_results(frame):
    """``frame`` with its energy/forces/stress moved into a single-point calculator (for ase .traj)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = frame.copy()
    results = {"energy": frame.info.pop("energy"), "forces": frame.arrays.pop("forces")}
    if "stress" in frame.info:
        results["stress"] = frame.info.pop("stress")
    frame.calc = SinglePointCalculator(frame, **results)
    return frame


class TrajectoryWriter:
    """Append frames to an extxyz (``.extxyz``/``.xyz``) or ase ``.traj`` file, one flushed write each.

    A run killed between frames leaves a file of complete frames; one killed inside a write leaves
    at most one partial extxyz frame at the end, which :func:`read_last_frame` skips and
    :func:`truncate_partial_tail` removes before a restart appends to the file.
    """

    def __init__(self, path: Path, append: bool) -> None:
        check_trajectory_path(path)
        self.path = path
        self.frames = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".traj":
            from ase.io.trajectory import Trajectory

            self._traj = Trajectory(str(path), "a" if append else "w")
            self._handle: Optional[IO[str]] = None
        else:
            self._traj = None
            self._handle = open(path, "a" if append else "w")

    def write(self, frame) -> None:
        """Append one frame and flush it to the operating system."""
        if self._traj is not None:
            self._traj.write(_with_results(frame))
            self._traj.backend.fd.flush()
        else:
            from ase.io.extxyz import write_extxyz

            buffer = io.StringIO()
            write_extxyz(buffer, [frame])
            self._handle.write(buffer.getvalue())  # one write per frame: a kill rarely splits a frame
            self._handle.flush()
        self.frames += 1

    def close(self) -> None:
        if self._traj is not None:
            self._traj.close()
        elif self._handle is not None:
            self._handle.close()


class MDLog:
    """The plain-text MD log (see the module docstring for its columns); one flushed row per call."""

    def __init__(self, path: Path, periodic: bool, append: bool) -> None:
        self.path = path
        self.columns = LOG_COLUMNS + (PERIODIC_COLUMNS if periodic else ())
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (append and path.exists() and path.stat().st_size > 0)
        self._handle = open(path, "a" if append else "w")
        if fresh:
            self._handle.write(" ".join(f"{c:>14}" for c in self.columns) + "\n")
            self._handle.flush()

    def row(self, values: Dict[str, float]) -> None:
        """Write one row: ``values`` maps every column name to its value."""
        cells = []
        for column in self.columns:
            value = values[column]
            cells.append(f"{int(value):>14d}" if column == "step" else f"{value:>14.6f}")
        self._handle.write(" ".join(cells) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_log(path: "str | Path") -> Dict[str, np.ndarray]:
    """The columns of an MD log as arrays, by header name (e.g. ``time_fs``, ``temperature_K``)."""
    path = Path(path)
    with open(path) as handle:
        header = handle.readline().split()
        if not header or header[0] != "time_fs":
            raise ValueError(f"{path} is not an MD log of sciml md (its first line should start with time_fs)")
        rows = np.loadtxt(handle, ndmin=2)
    if rows.size == 0:
        rows = np.zeros((0, len(header)))
    if rows.shape[1] != len(header):
        raise ValueError(f"{path}: rows have {rows.shape[1]} columns, the header {len(header)}")
    return {name: rows[:, k] for k, name in enumerate(header)}


def truncate_log_after(path: Path, time_fs: float) -> None:
    """Drop the rows of the log at ``path`` later than ``time_fs`` (a run killed after logging a step
    it never wrote as a frame), streaming through a temporary file."""
    from sciml.io.files import atomic_path

    if not path.exists():
        return
    with atomic_path(path) as tmp, open(path) as src, open(tmp, "w") as dst:
        header = src.readline()
        dst.write(header)
        for line in src:
            fields = line.split()
            try:
                keep = float(fields[0]) <= time_fs + 1e-6
            except (ValueError, IndexError):
                keep = False
            if keep:
                dst.write(line)


def _extxyz_frames(path: Path) -> Tuple[Optional[int], int]:
    """The byte offset of the last complete extxyz frame of ``path`` (None if it has none) and the
    offset where the complete frames end, streamed line by line (two numbers kept, not frames)."""
    last: Optional[int] = None
    end = 0
    with open(path, "rb") as handle:
        while True:
            start = handle.tell()
            first = handle.readline()
            if not first:
                break
            if not first.strip():
                end = handle.tell()  # blank trailing line
                continue
            try:
                count = int(first.split()[0])
            except ValueError:
                break
            complete = True
            for _ in range(count + 1):
                line = handle.readline()
                if not line.endswith(b"\n"):
                    complete = False
                    break
            if not complete:
                break
            last = start
            end = handle.tell()
    return last, end


def read_last_frame(path: "str | Path"):
    """The last complete frame of a trajectory written by ``sciml md`` (extxyz or .traj), as ase.Atoms
    with momenta, constraints and ``info['time_fs']``/``info['step']``; ValueError if it has none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--restart: {path} does not exist")
    check_trajectory_path(path)
    try:
        if path.suffix.lower() == ".traj":
            from ase.io.trajectory import Trajectory

            with Trajectory(str(path), "r") as traj:
                if len(traj) == 0:
                    raise ValueError("no frames")
                atoms = traj[-1]
                info = dict(atoms.info)
        else:
            from ase.io.extxyz import read_xyz

            last, end = _extxyz_frames(path)
            if last is None:
                raise ValueError("no complete frame")
            with open(path, "rb") as handle:
                handle.seek(last)
                text = handle.read(end - last).decode()
            atoms = next(read_xyz(io.StringIO(text), 0))
            info = dict(atoms.info)
    except Exception as err:  # noqa: BLE001 - any parse failure is a corrupt file for the user
        raise ValueError(f"--restart: cannot read the last frame of {path} ({err})") from None
    if "time_fs" not in info or "step" not in info:
        raise ValueError(f"--restart: {path} was not written by sciml md (its last frame has no time_fs/step)")
    if not atoms.has("momenta"):
        raise ValueError(f"--restart: the last frame of {path} has no momenta")
    momenta = atoms.get_momenta()
    atoms.calc = None
    atoms.info = {"time_fs": float(info["time_fs"]), "step": int(info["step"])}
    atoms.set_momenta(momenta, apply_constraint=False)
    return atoms


def truncate_partial_tail(path: Path) -> None:
    """Cut a partial last extxyz frame (a run killed inside a write) so appended frames stay readable."""
    if path.suffix.lower() == ".traj":
        return
    _, end = _extxyz_frames(path)
    if end < path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(end)


def default_log_path(trajectory: Optional[Path]) -> Optional[Path]:
    """The log beside a trajectory: ``run/md.extxyz`` -> ``run/md.log``; None without a trajectory."""
    return None if trajectory is None else trajectory.with_suffix(".log")

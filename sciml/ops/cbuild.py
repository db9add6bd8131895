"""Building the generated C kernels of the CPU operators: system compiler and an on-disk cache.

Kernels are compiled with ``cc -O3 -march=native -fopenmp`` into ``$SCIML_CACHE_DIR/kernels``
(default ``~/.cache/sciml/kernels``), keyed by the source, the compiler, the flags and the CPU
model, so a home directory shared by different machines never loads a binary built for another
CPU. No torch headers are involved, so a build takes well under a second for small sources. A
built function is named to an operator of ``torch.ops.sciml`` (``sciml.ops.library``) as
``"path/to/kernel.so:symbol"``; the operator loads it and calls it from C++.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, List

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu99"]


def cpu_model() -> str:
    """The CPU's model name (part of every build key)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line for line in handle if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def cache_dir(kind: str = "kernels") -> Path:
    """Where builds of ``kind`` are kept: ``$SCIML_CACHE_DIR/<kind>`` (default ``~/.cache/sciml``);
    kernels, or deploy (the C++ front ends of exported models)."""
    return Path(os.environ.get("SCIML_CACHE_DIR", Path.home() / ".cache" / "sciml")) / kind


def compiler(cxx: bool = False) -> str:
    """The C compiler (``$CC``, else ``cc``/``gcc``) or, with ``cxx``, the C++ compiler (``$CXX``,
    else ``c++``/``g++``) on PATH; RuntimeError if there is none."""
    names = ("CXX", "c++", "g++") if cxx else ("CC", "cc", "gcc")
    found = os.environ.get(names[0]) or shutil.which(names[1]) or shutil.which(names[2])
    if found is None:
        raise RuntimeError(f"no {'C++' if cxx else 'C'} compiler found (set {names[0]})")
    return found


def build_library(source: str) -> Path:
    """Compile ``source`` into a shared library (cached on disk) and return its path.

    Raises RuntimeError with the compiler's message when the build fails.
    """
    cc = compiler()
    key = hashlib.sha256("\n".join([source, cc, *FLAGS, cpu_model()]).encode()).hexdigest()[:20]

    def command(scratch: Path, output: Path) -> List[str]:
        source_file = scratch / "kernel.c"
        source_file.write_text(source)
        return [cc, *FLAGS, str(source_file), "-o", str(output)]

    return build_once(cache_dir() / f"k_{key}.so", command, "a C kernel")


def build_once(target: Path, command: Callable[[Path, Path], List[str]], what: str) -> Path:
    """``target``, built first if it is not there: ``command(scratch, output)`` gives the compiler
    command line writing ``output`` (files it needs may go in the ``scratch`` folder); the result
    is renamed onto ``target`` at once, so concurrent builders never see a partial file.

    Raises RuntimeError naming ``what`` with the compiler's first error lines when the build fails.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        output = Path(scratch) / target.name
        result = subprocess.run(command(Path(scratch), output), capture_output=True, text=True)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            errors = [line for line in lines if "error" in line] or lines
            raise RuntimeError(f"compiling {what} failed: {' | '.join(errors[:3])[:600]}")
        os.replace(output, target)
    return target


def kernel_name(source: str, symbol: str) -> str:
    """``"path:symbol"`` of function ``symbol`` in ``source`` compiled by :func:`build_library`."""
    return f"{build_library(source)}:{symbol}"

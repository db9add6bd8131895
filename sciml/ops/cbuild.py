"""Building small C kernels at run time: system compiler, on-disk cache, ctypes loading.

Kernels are compiled with ``cc -O3 -march=native -fopenmp`` into ``$SCIML_CACHE_DIR/kernels``
(default ``~/.cache/sciml/kernels``), keyed by the source, the compiler, the flags and the CPU
model, so a home directory shared by different machines never loads a binary built for another
CPU. No torch headers are involved, so a build takes well under a second for small sources.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu99"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line for line in handle if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    return Path(os.environ.get("SCIML_CACHE_DIR", Path.home() / ".cache" / "sciml")) / "kernels"


def compiler() -> str:
    """The C compiler (``$CC``, else ``cc``/``gcc`` on PATH); RuntimeError if there is none."""
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if found is None:
        raise RuntimeError("no C compiler found (set CC)")
    return found


def compile_c(source: str, name: str) -> Callable:
    """Compile ``source`` (cached on disk) and return its function ``name`` via ctypes (restype None).

    Raises RuntimeError with the compiler's message when the build fails.
    """
    cc = compiler()
    key = hashlib.sha256("\n".join([source, cc, *FLAGS, _cpu_model()]).encode()).hexdigest()[:20]
    target = cache_dir() / f"k_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            source_file = Path(scratch) / "kernel.c"
            source_file.write_text(source)
            temporary = Path(scratch) / target.name
            result = subprocess.run([cc, *FLAGS, str(source_file), "-o", str(temporary)], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"compiling a C kernel failed: {result.stderr.strip()[:500]}")
            os.replace(temporary, target)  # atomic: concurrent builders never see a partial file
    function = getattr(ctypes.CDLL(str(target)), name)
    function.restype = None
    return function


def pointer(tensor: Optional[Any]) -> ctypes.c_void_p:
    """A kernel argument for ``tensor``'s data (a contiguous torch tensor), NULL for None."""
    return ctypes.c_void_p(None if tensor is None else tensor.data_ptr())

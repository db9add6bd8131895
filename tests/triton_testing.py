"""Checking Triton kernels without a GPU, for the kernel test files.

Triton decides when it is first imported whether kernels run in its interpreter, so interpreter
tests run in a child pytest started with ``TRITON_INTERPRET=1`` (:func:`run_in_interpreter`), and
skip in a process where triton was imported without it. Triton's NVIDIA backend compiles a kernel
to a cubin without a device (:func:`compile_for_sm90`), which catches type and layout errors the
interpreter accepts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_in_interpreter(test_file: str, keyword: str, timeout: float = 300) -> None:
    """Run the tests of ``test_file`` matching ``-k keyword`` under TRITON_INTERPRET=1; all must pass, none skip."""
    environment = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytest", str(test_file), "-q", "-k", keyword, "-p", "no:cacheprovider"]
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def compile_for_sm90(kernel: Any, signature: Dict[str, str], constexprs: Dict[str, Any], num_warps: int) -> bytes:
    """The sm_90 cubin of a ``triton.jit`` kernel; skips without triton's NVIDIA backend or under the interpreter.

    Args:
        kernel: the JITFunction.
        signature: parameter name -> Triton type ("*fp32", "i32", ...; "constexpr" for constants).
        constexprs: values of the constexpr parameters.
        num_warps: warps per program, as the launch would use.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA backend")
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes"):
        pytest.skip("TRITON_INTERPRET is set: triton.jit gives the interpreter, not the compiler")
    source = ASTSource(kernel, signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    return compiled.asm["cubin"]

"""A wheel, not only an editable checkout, carries the kernel sources and builds working kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # wheel builds and compiler fallbacks in subprocesses

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import json, warnings
import torch
from e3nn import o3
import sciml
from sciml.ops import ChannelwiseTensorProduct, library
from sciml.ops.tensor_product import cpu
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tp = ChannelwiseTensorProduct("4x0e+4x1o", "0e+1o").double()
    x1, x2, w = torch.randn(6, 16, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.randn(6, tp.weight_numel, dtype=torch.float64)
    out = tp(x1, x2, w)
    tp2 = ChannelwiseTensorProduct("4x0e+4x1o", "0e+1o").double()
tp.backend = "reference"
print(json.dumps({"file": sciml.__file__, "available": library.available(), "backend": tp2.resolved_backend,
                  "error": float((out - tp(x1, x2, w)).abs().max()), "warnings": [str(w.message) for w in caught]}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """sciml's wheel unpacked into a fresh folder (its dependencies come from this environment)."""
    root = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT), "-w", str(root)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"building the wheel failed: {build.stderr[-2000:]}")
    wheel = next(root.glob("sciml-*.whl"))
    target = root / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    return wheel, target


def _run(target: Path, cache: Path, **env) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(target), "SCIML_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=target, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_wheel_ships_every_kernel_and_deployment_source(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    deploy = [f"sciml/deploy/csrc/{path.name}" for path in (ROOT / "sciml" / "deploy" / "csrc").iterdir()]
    for source in ("sciml/_kernels/sciml_ops.cpp", "sciml/_kernels/tp_core.cu", "sciml/_kernels/tp_core.cpp",
                   "sciml/ops/tensor_product/cpu_kernel.c", *deploy):
        assert source in names, f"{source} is missing from {wheel.name}"


def test_a_wheel_install_builds_the_operators_in_a_cold_cache(installed, tmp_path):
    _, target = installed
    result = _run(target, tmp_path / "cache")
    assert result["file"].startswith(str(target)), "the check imported the checkout, not the wheel"
    assert result["available"] and result["backend"] == "cpu"
    assert result["error"] < 1e-12
    assert not result["warnings"]
    assert any((tmp_path / "cache" / "kernels").glob("sciml_ops_*/*.so")), "the operator library was not cached"


def test_without_a_compiler_everything_falls_back_with_one_warning(installed, tmp_path):
    _, target = installed
    result = _run(target, tmp_path / "cache", CC="/nonexistent/cc", CXX="/nonexistent/c++")
    assert not result["available"] and result["backend"] == "reference"
    assert result["error"] == 0.0
    assert len([w for w in result["warnings"] if "unavailable" in w]) == 1, result["warnings"]

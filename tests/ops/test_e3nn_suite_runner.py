"""workflows/e3nn_suite/run_suite.py on a miniature e3nn repository: tests taken at a tag, e3nn
patched before the test modules import it, counts and failing ids reported."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "workflows" / "e3nn_suite" / "run_suite.py"

TESTS = '''
from e3nn.o3 import TensorProduct  # bound at import: must already be sciml's


def test_patched():
    assert TensorProduct.__module__.startswith("sciml.")


def test_fails():
    assert False
'''


def _runner():
    spec = importlib.util.spec_from_file_location("run_suite", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_runner_patches_before_collection_and_counts(tmp_path):
    repo = tmp_path / "e3nn"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_mini.py").write_text(TESTS)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "tests")
    _git(repo, "tag", "9.9.9")
    runner = _runner()
    out = tmp_path / "counts.json"
    assert runner.main(["--e3nn-repo", str(repo), "--tag", "9.9.9", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["counts"]["passed"] == 1 and summary["counts"]["failed"] == 1
    assert summary["failing"] == ["tests/test_mini.py::test_fails"] and summary["patched"]
    runner.main(["--e3nn-repo", str(repo), "--tag", "9.9.9", "--plain", "--json", str(out)])
    assert json.loads(out.read_text())["counts"]["failed"] == 2  # plain e3nn: TensorProduct is e3nn's


def test_summary_parsing():
    output = "FAILED tests/a.py::t[1] - x\nERROR tests/b.py::u\n= 3 failed, 10 passed, 2 skipped, 1 error in 5s ="
    summary = _runner().summarise(output)
    assert summary["counts"]["passed"] == 10 and summary["counts"]["failed"] == 3 and summary["counts"]["errors"] == 1
    assert summary["failing"] == ["tests/a.py::t[1]", "tests/b.py::u"]

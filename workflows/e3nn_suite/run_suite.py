"""Run e3nn's own test suite with sciml swapped in (``sciml.ops.patch_e3nn``), and count.

    python workflows/e3nn_suite/run_suite.py --e3nn-repo PATH [--tag 0.6.0] [--plain] [-- PYTEST ARGS]

``PATH`` is a git clone (or bare mirror) of https://github.com/e3nn/e3nn; the tests are taken at
``--tag`` (default: the installed e3nn's version, so tests and library agree) into a scratch
folder and run against the installed e3nn, patched before any test module is imported (a pytest
plugin). ``--plain`` runs them unpatched, for the baseline. Prints passed / failed / skipped /
errors and the failing test ids, and writes them as JSON with ``--json FILE``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PLUGIN = '''
"""pytest plugin: patch e3nn with sciml before e3nn's test modules are imported."""
import sciml.ops

PATCH = sciml.ops.patch_e3nn()
'''


def extract_tests(repo: Path, tag: str, into: Path) -> Path:
    """e3nn's ``tests`` folder at ``tag`` -> ``into/tests``."""
    archive = subprocess.run(["git", "-C", str(repo), "archive", tag, "tests"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "tests"


def summarise(output: str) -> dict:
    """Counts from pytest's final line and the failing ids from its short summary (``-rfE``)."""
    counts = {key: 0 for key in ("passed", "failed", "skipped", "errors", "xfailed", "xpassed")}
    final = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    if final:
        for number, key in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", final[-1]):
            counts["errors" if key.startswith("error") else key] = int(number)
    failing = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)))
    return {"counts": counts, "failing": failing}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--e3nn-repo", type=Path, required=True, help="git clone or mirror of e3nn")
    parser.add_argument("--tag", default=None, help="e3nn tag whose tests to run (default: the installed version)")
    parser.add_argument("--plain", action="store_true", help="run without the sciml patch (baseline)")
    parser.add_argument("--json", type=Path, default=None, help="write counts and failing ids here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    import e3nn

    tag = args.tag or e3nn.__version__
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tests = extract_tests(args.e3nn_repo, tag, scratch)
        (scratch / "sciml_e3nn_patch_plugin.py").write_text(PLUGIN)
        command = [sys.executable, "-m", "pytest", str(tests), "-q", "-rfE", "-p", "no:cacheprovider", *args.pytest_args]
        if not args.plain:
            command[3:3] = ["-p", "sciml_e3nn_patch_plugin"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(scratch), os.environ.get("PYTHONPATH")])))
        result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    summary = summarise(output)
    summary.update(tag=tag, e3nn=e3nn.__version__, patched=not args.plain)
    print(output[-3000:] if summary["counts"]["passed"] == 0 else "")
    counts = summary["counts"]
    print(f"e3nn {tag} test suite, {'plain e3nn' if args.plain else 'sciml patched in'}: "
          + ", ".join(f"{counts[k]} {k}" for k in counts))
    for test in summary["failing"]:
        print("  not passing:", test)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

import subprocess
import sys

from sciml.cli.main import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    assert "bench" in capsys.readouterr().out


def test_bench_neighbors_prints_ratios():
    result = subprocess.run(
        [sys.executable, "-m", "sciml.cli.main", "bench", "neighbors", "--sizes", "100", "800", "--repeats", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "sciml/matscipy" in result.stdout and "scaling exponent" in result.stdout
    assert len(result.stdout.strip().splitlines()) == 5


def test_bad_arguments_give_one_line_errors(capsys):
    assert main(["bench", "neighbors", "--sizes", "100", "--cutoff", "-1", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: cutoff must be a positive" in err and "Traceback" not in err

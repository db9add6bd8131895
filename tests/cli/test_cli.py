import subprocess
import sys

import pytest

from sciml.cli.main import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    assert "bench" in capsys.readouterr().out


@pytest.mark.slow
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


def test_train_set_accumulates_over_repeated_flags(tmp_path, monkeypatch):
    """`--set a=1 --set b=2` applies both overrides (argparse would keep only the last)."""
    import sciml.train as train_module
    from sciml.cli.main import main

    seen = {}

    def fake_train(config, resume=False):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(train_module, "train", fake_train)
    config = tmp_path / "c.yaml"
    config.write_text("data: {path: x.extxyz}\n")
    with pytest.raises(SystemExit):
        main(["train", str(config), "--set", "epochs=3", "--set", "optimizer.lr=0.5", "seed=7"])
    assert (seen["config"].epochs, seen["config"].optimizer.lr, seen["config"].seed) == (3, 0.5, 7)

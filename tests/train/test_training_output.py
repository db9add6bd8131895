"""What training prints and logs: the header, train.log, progress lines with ETA, the epoch table
with units, and the `sciml train` argument fixes (--set before the config, dtype double)."""

import csv
import io
import json
import re
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.io import read, write

from cli_testing import one_error_line
from sciml.cli.main import main
from sciml.devices import runtime_line
from sciml.train import Trainer, load_config
from sciml.train.report import EpochTable, ProgressReporter, RunLog, column

DATA = Path(__file__).resolve().parents[2] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.extxyz"
    write(path, read(DATA, ":60"))
    return path


def config_for(data: Path, out: Path, *overrides: str):
    return load_config(None, [f"data.path={data}", f"output_dir={out}", "model.options={hidden: 16, layers: 2}",
                              "split.train=40", "split.valid=10", "split.test=10", "batch_size=10", *overrides])


@pytest.fixture(scope="module")
def logged_run(small, tmp_path_factory):
    """A verbose 3-epoch run with progress every batch, then resumed (quietly) to 4 epochs; the
    first run's stdout and stderr, its train.log as it was, the trainer and the folder."""
    out = tmp_path_factory.mktemp("runs") / "run"
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        trainer = Trainer(config_for(small, out, "epochs=3", "progress_every_s=1e-9"), verbose=True)
        trainer.fit()
    first_log = (out / "train.log").read_text()
    Trainer(config_for(small, out, "epochs=4", "progress_every_s=1e-9"), resume=True, verbose=False).fit()
    return {"out": out, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "first_log": first_log,
            "trainer": trainer}


@pytest.mark.slow
def test_header_numbers_come_from_the_data(logged_run, small):
    out, trainer = logged_run["out"], logged_run["trainer"]
    log = logged_run["first_log"]
    frames = read(small, ":")
    train = [frames[i] for i in json.loads((out / "splits.json").read_text())["train"]]
    per_atom = np.array([a.get_potential_energy() / len(a) for a in train])
    forces = np.concatenate([a.get_forces().ravel() for a in train])

    assert "small.extxyz: 60 structures (train 40, valid 10, test 10), 9 atoms each, elements H C O" in log
    match = re.search(r"energy/atom mean (\S+) std (\S+) eV/atom; forces RMS (\S+) eV/Å", log)
    assert match, log
    mean, std, rms = map(float, match.groups())
    assert mean == pytest.approx(per_atom.mean(), rel=1e-5)
    assert std == pytest.approx(per_atom.std(), rel=1e-3)
    assert rms == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-3)
    parameters = sum(p.numel() for p in trainer.model.parameters())
    assert f"model    egnn: {parameters:,} parameters" in log
    # the runtime line is part of the header, before any epoch
    runtime = runtime_line(trainer.device, trainer.dtype)
    assert log.index(runtime) < log.index("epoch 1/3")
    assert "training 3 epochs x 4 batches of <= 10 structures" in log


@pytest.mark.slow
def test_train_log_holds_everything_printed(logged_run):
    out, stdout, stderr, log = logged_run["out"], logged_run["stdout"], logged_run["stderr"], logged_run["first_log"]
    for line in stdout.splitlines() + stderr.splitlines():
        assert line in log.splitlines(), line
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    epoch_lines = [line for line in log.splitlines() if re.match(r"\s*\d+/3 ", line)]
    assert len(epoch_lines) == 3 and len(rows) == 4  # metrics.csv has the resumed epoch 4 too
    best = float("inf")
    for line, row in zip(epoch_lines, rows):
        assert line.split()[0] == f"{row['epoch']}/3"
        assert float(line.split()[2]) == pytest.approx(float(row["valid_loss"]), rel=1e-3)
        improved = float(row["valid_loss"]) < best
        best = min(best, float(row["valid_loss"]))
        assert line.endswith(" *") == improved
    # fixed width: the rows as wide as the column header (less the marker)
    names = next(line for line in log.splitlines() if re.match(r"epoch +train +valid", line))
    assert {len(line.removesuffix(" *")) for line in epoch_lines} == {len(names)}
    assert "run " in log and "best epoch" in log  # the final summary


@pytest.mark.slow
def test_epoch_header_names_units_and_the_best_marker_once(logged_run):
    lines = logged_run["first_log"].splitlines()
    at = next(n for n, line in enumerate(lines) if re.match(r"epoch +train +valid", line))
    names, units = lines[at], lines[at + 1]
    assert lines[at - 1].count("* = lowest validation loss") == 1
    assert sum("* = " in line for line in lines) == 1
    for unit in ("meV/atom", "meV", "meV/Å", "samples/s"):
        assert unit in units.split()
    # each unit sits under its column's label (right-aligned to the same end)
    for label, unit in (("F MAE", "meV/Å"), ("time", "s")):
        end = names.index(label) + len(label)
        assert units[end - len(unit):end] == unit


@pytest.mark.slow
def test_progress_lines_with_eta_when_stderr_is_not_a_terminal(logged_run):
    progress = [line for line in logged_run["stderr"].splitlines() if "ETA" in line]
    # every batch but the epoch's last, 3 epochs of 4 batches
    assert len(progress) == 9, logged_run["stderr"]
    assert re.match(r"epoch 1/3  batch 1/4 \(25%\)  [\d.]+ structures/s, \d+ atoms/s  loss \S+  "
                    r"ETA epoch \d+:\d\d:\d\d \(\+ validation\), run \d+:\d\d:\d\d", progress[0]), progress[0]


@pytest.mark.slow
def test_resume_appends_to_train_log(logged_run):
    log = (logged_run["out"] / "train.log").read_text()
    assert log.startswith(logged_run["first_log"])
    second = log[len(logged_run["first_log"]):]
    assert second.startswith("# sciml train, pid")
    assert "resuming from" in second and "(resumed after epoch 3)" in second
    assert re.search(r"^\s*4/4 ", second, re.M)  # logged though verbose=False
    assert log.count("energy/atom mean") == 2


def test_progress_eta_and_terminal_choice(tmp_path, monkeypatch, capsys):
    """A fake clock: 1 s per batch, 10 batches per epoch, epoch 1 of 3."""
    log = RunLog(echo=True, write=True)
    log.attach(tmp_path)
    now = [0.0]
    reporter = ProgressReporter(log, epochs=3, interval_s=2.5, clock=lambda: now[0])
    reporter.start_epoch(1, 10)
    for batch in range(1, 11):
        now[0] += 1.0
        reporter.batch_done(batch, 5, 45, 0.5)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[1] for line in lines] == ["batch 3/10 (30%)", "batch 6/10 (60%)", "batch 9/10 (90%)"]
    assert "5.0 structures/s, 45 atoms/s" in lines[0]
    assert "ETA epoch 0:00:07 (+ validation), run 0:00:27" in lines[0]  # 7 s + 2 epochs of 10 s
    reporter.end_epoch(12.0)  # the whole epoch 1 with validation
    monkeypatch.setattr(sys, "stderr", _Terminal())
    reporter.start_epoch(2, 10)
    now[0] += 3.0
    reporter.batch_done(3, 5, 45, 0.5)
    assert "run 0:00:19" in (tmp_path / "train.log").read_text().splitlines()[-1]  # 7 s + 1 epoch of 12 s
    assert sys.stderr.written == ""  # a terminal shows tqdm's bar instead


class _Terminal:
    written = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.written += text

    def flush(self) -> None:
        pass


def test_property_columns_take_their_units():
    assert column("valid_band_gap_mae", {"band_gap": "eV"}) == ("band_gap MAE", "eV")
    assert column("valid_band_gap_mse", {"band_gap": "eV"}) == ("band_gap MSE", "eV^2")
    assert column("valid_stress_mae_meV_per_A3", {}) == ("S MAE", "meV/Å^3")
    table = EpochTable(100, {"band_gap": "eV"})
    row = {"epoch": 7, "train_loss": 0.5, "valid_loss": 0.25, "valid_band_gap_mae": 0.123456, "lr": 1e-3,
           "epoch_time_s": 12.5, "samples_per_s": 1234.5, "peak_memory_mb": 100.0}
    header = table.header(row)
    assert header[2].split() == ["loss", "loss", "eV", "s", "samples/s"]
    assert table.row(row, True) == "  7/100       0.5      0.25       0.1235    0.001      12.5      1234 *"


@pytest.mark.slow
def test_set_before_the_config_and_dtype_double(small, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "egnn", "options": {"hidden": 8, "layers": 1}},
                                      "data": {"path": str(small)}, "split": {"train": 20, "valid": 10, "test": 0},
                                      "epochs": 5, "output_dir": str(tmp_path / "run")}))
    assert main(["train", "--set", "epochs=1", "dtype=double", str(config)]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["dtype"] == "float64"
    assert "dtype float64" in (tmp_path / "run" / "train.log").read_text()
    capsys.readouterr()
    one_error_line(capsys, main(["train", str(config), "--set", "epochs=1", "other.yaml"]), "KEY=VALUE", "other.yaml")
    one_error_line(capsys, main(["train", "--set", "epochs=1"]), "missing the YAML config")
    assert load_config(None, [f"data.path={small}", "dtype=single"]).dtype == "float32"

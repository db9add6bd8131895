"""The sciml command line end to end on a tiny run (one clear error line for every bad input)."""

import json
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write

from cli_testing import one_error_line
from sciml.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"

CONFIG = """
model: {{name: egnn, options: {{hidden: 16, layers: 2, cutoff: 4.0}}}}
data: {{path: {data}}}
split: {{train: 40, valid: 10, test: 10, seed: 0}}
optimizer: {{lr: 0.005}}
epochs: 2
batch_size: 10
output_dir: {out}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch run on 60 ethanol frames, made with `sciml train`."""
    folder = tmp_path_factory.mktemp("cli")
    write(folder / "small.extxyz", read(DATA, ":60"))
    config = folder / "config.yaml"
    config.write_text(CONFIG.format(data=folder / "small.extxyz", out=folder / "run"))
    assert main(["train", str(config)]) == 0
    return folder


@pytest.mark.slow
def test_train_writes_run_files_and_resume_continues(run, capsys):
    out = run / "run"
    assert {"best.pt", "last.pt", "metrics.csv", "config.yaml", "splits.json"} <= {p.name for p in out.iterdir()}
    assert main(["train", str(run / "config.yaml"), "--resume", "--epochs", "3"]) == 0
    assert f"resuming from {out / 'last.pt'} (epoch 2" in capsys.readouterr().err
    epochs = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]
    best = (out / "best.pt").read_bytes()
    code = main(["train", str(run / "config.yaml")])
    one_error_line(capsys, code, "already holds a run")
    assert (out / "best.pt").read_bytes() == best


@pytest.mark.slow
def test_eval_predict_check_md_relax_plot(run, capsys, tmp_path):
    ckpt = str(run / "run" / "best.pt")
    small = str(run / "small.extxyz")
    assert main(["eval", "--checkpoint", ckpt, small]) == 0
    assert "forces_mae_meV_per_A" in capsys.readouterr().out
    for suffix in ("csv", "json", "extxyz"):
        output = tmp_path / f"pred.{suffix}"
        assert main(["predict", "--checkpoint", ckpt, small, "--output", str(output)]) == 0
    rows = json.loads((tmp_path / "pred.json").read_text())
    assert len(rows) == 60 and np.array(rows[0]["forces_eV_per_A"]).shape == (9, 3)
    assert (tmp_path / "pred.csv").read_text().startswith("file,index,formula,atoms,energy_eV")
    frames = read(tmp_path / "pred.extxyz", ":")
    assert len(frames) == 60 and "sciml_forces" in frames[0].arrays and "sciml_energy" in frames[0].info
    assert frames[0].info["sciml_energy"] == pytest.approx(rows[0]["energy_eV"], abs=1e-4)
    capsys.readouterr()
    assert main(["check", ckpt, "--tolerance", "1e-6"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["md", ckpt, small, "--steps", "20", "--timestep", "0.25", "--output", str(tmp_path / "md.extxyz")]) == 0
    assert "energy drift" in capsys.readouterr().out and len(read(tmp_path / "md.extxyz", ":")) == 21
    assert main(["relax", ckpt, small, "--fmax", "0.05", "--steps", "300"]) == 0
    assert main(["plot", "parity", str(run / "run"), "--output", str(tmp_path / "parity.png")]) == 0
    assert main(["plot", "curves", str(run / "run"), "--output", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "parity.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_outputs_are_never_overwritten(run, capsys, tmp_path):
    output = tmp_path / "pred.csv"
    output.write_text("precious")
    code = main(["predict", "--checkpoint", str(run / "run" / "best.pt"), str(run / "small.extxyz"), "--output", str(output)])
    one_error_line(capsys, code, "already exists")
    assert output.read_text() == "precious"


def write_text(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.slow
def test_bad_inputs_give_one_clear_line(run, capsys, tmp_path):
    ckpt = str(run / "run" / "best.pt")
    out = str(tmp_path / "out.csv")
    cases = {
        "unknown element": (write_text(tmp_path / "x.xyz", "2\n\nXx 0 0 0\nH 0 0 0.7\n"), "Xx"),
        "NaN coordinates": (write_text(tmp_path / "n.xyz", "2\n\nH 0 0 nan\nH 0 0 0.7\n"), "NaN"),
        "empty file": (write_text(tmp_path / "e.xyz", ""), "empty"),
        "isolated atoms": (write_text(tmp_path / "i.xyz", "2\n\nH 0 0 0\nH 0 0 9.0\n"), "no neighbour"),
    }
    for name, (path, needle) in cases.items():
        code = main(["predict", "--checkpoint", ckpt, path, "--output", out])
        one_error_line(capsys, code, needle)
        assert not Path(out).exists(), name
    broken = tmp_path / "broken.pt"
    broken.write_bytes((run / "run" / "best.pt").read_bytes()[:1000])
    one_error_line(capsys, main(["predict", "--checkpoint", str(broken), str(run / "small.extxyz"), "--output", out]), "truncated or corrupted")
    config = tmp_path / "typo.yaml"
    config.write_text((run / "config.yaml").read_text().replace("batch_size", "bach_size"))
    one_error_line(capsys, main(["train", str(config)]), "bach_size", "batch_size")
    missing = tmp_path / "missing.yaml"
    missing.write_text("epochs: 2\n")
    one_error_line(capsys, main(["train", str(missing)]), "data.path")


def test_data_generate_nbody(tmp_path, capsys):
    output = tmp_path / "nbody.npz"
    assert main(["data", "generate", "nbody", "--simulations", "3", "--output", str(output)]) == 0
    assert np.load(output)["loc"].shape[0] == 3
    one_error_line(capsys, main(["data", "generate", "nbody", "--simulations", "3", "--output", str(output)]), "already exists")


def test_every_command_has_help_with_examples(capsys):
    for command in ("train", "eval", "predict", "md", "relax", "data", "check", "plot", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "examples:" in capsys.readouterr().out, command

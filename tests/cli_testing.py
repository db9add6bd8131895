"""Shared pieces of the CLI tests: a bad input fails with exit code 2 and one clear line; a small
trained checkpoint to run commands on."""

from pathlib import Path


def one_error_line(capsys, code, *needles):
    """Assert ``code`` is 2 and stderr holds one line (no traceback) containing every needle; return it."""
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


ETHANOL = Path(__file__).resolve().parents[1] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"

#: A one-epoch EGNN run on ethanol frames (format with data= and out=).
SMALL_RUN_CONFIG = """
model: {{name: egnn, options: {{hidden: 16, layers: 2, cutoff: 4.0}}}}
data: {{path: {data}}}
split: {{train: 20, valid: 5, test: 5, seed: 0}}
epochs: 1
batch_size: 10
output_dir: {out}
"""


def train_small_ethanol_model(folder: Path) -> Path:
    """Train :data:`SMALL_RUN_CONFIG` on the first 30 ethanol frames with ``sciml train`` in
    ``folder``; returns the float32 checkpoint ``folder/run/best.pt``."""
    from ase.io import read, write

    from sciml.cli.main import main

    write(folder / "data.extxyz", read(ETHANOL, ":30"))
    (folder / "config.yaml").write_text(SMALL_RUN_CONFIG.format(data=folder / "data.extxyz", out=folder / "run"))
    assert main(["train", str(folder / "config.yaml")]) == 0
    return folder / "run" / "best.pt"

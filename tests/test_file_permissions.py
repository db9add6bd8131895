"""Files sciml writes get the permissions an ordinary write gives: 0o666 less the umask, or those of
the file they replace (atomic writes go through a temporary file, which alone would be 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from sciml.data.generators.nbody import save_nbody
from sciml.data.pde import write_fno_mat
from sciml.io.checkpoint import save_checkpoint
from sciml.io.files import write_extxyz
from sciml.plots import parity_plot
from sciml.train import load_config, train

ETHANOL = Path(__file__).resolve().parents[1] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=["022", "077", "002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


WRITERS = {
    "checkpoint": lambda path: save_checkpoint(path, {"w": torch.ones(2)}, "egnn", {}),
    "extxyz": lambda path: write_extxyz(path, ase.io.read(ETHANOL, index=":2")),
    "fno_mat": lambda path: write_fno_mat(path, np.zeros((1, 4, 4, 2)), np.zeros((1, 4, 4)), np.arange(2.0)),
    "nbody": lambda path: save_nbody(path, {key: np.zeros(2) for key in ("loc", "vel", "charges", "clipped")}),
    "plot": lambda path: parity_plot({"energy": (np.arange(3.0), np.arange(3.0))}, path, {"energy": "eV"}),
}
SUFFIXES = {"checkpoint": ".pt", "extxyz": ".extxyz", "fno_mat": ".mat", "nbody": ".npz", "plot": ".png"}


@pytest.mark.parametrize("kind", WRITERS)
def test_new_files_honour_the_umask(kind, umask, tmp_path):
    path = tmp_path / f"out{SUFFIXES[kind]}"
    WRITERS[kind](path)
    assert mode(path) == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_overwriting_keeps_the_existing_files_permissions(tmp_path):
    path = tmp_path / "model.pt"
    WRITERS["checkpoint"](path)
    path.chmod(0o640)
    WRITERS["checkpoint"](path)
    assert mode(path) == 0o640


@pytest.mark.slow
def test_a_training_run_writes_its_files_with_the_umasks_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        data = tmp_path / "ethanol.extxyz"
        ase.io.write(data, ase.io.read(ETHANOL, index=":12"))
        config = load_config(None, [f"data.path={data}", "model={name: egnn, options: {hidden: 8, layers: 1}}",
                                    "split.valid=2", "split.test=2", "batch_size=4", "epochs=1",
                                    f"output_dir={tmp_path / 'run'}"])
        train(config, verbose=False)
    finally:
        os.umask(previous)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"best.pt", "last.pt", "metrics.csv", "config.yaml", "splits.json"} <= {p.name for p in written}
    assert {p.name: mode(p) for p in written} == {p.name: 0o644 for p in written}

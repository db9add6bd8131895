"""``sciml plot``: learning curves as a grid with units and the best epoch, parity panels whose
printed MAE/RMSE agree with errors computed elsewhere (the trainer's test metrics, sciml.inference
.predict), stress panels for periodic energy models and property panels for ComFormer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.io import read, write

from sciml.cli.main import main
from sciml.plots import GPA_PER_EV_PER_A3, VOIGT, curves_figure, parity_figure, parity_panels, read_metrics

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[2]
ETHANOL = ROOT / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"
CRYSTALS = ROOT / "datasets" / "crystals_emt" / "dft_3d.json"
CRYSTAL_CONFIG = ROOT / "workflows" / "crystals" / "emt_small.yaml"

EGNN = """
model: {{name: egnn, options: {{hidden: 16, layers: 2, cutoff: 4.0}}}}
data: {{path: {data}}}
split: {{train: {train}, valid: 8, test: 8, seed: 0}}
loss: {{energy: 1.0, forces: 10.0, stress: 1.0}}
optimizer: {{lr: 0.005}}
epochs: 3
batch_size: 8
output_dir: {out}
"""


def train_egnn(folder: Path, frames, train: int) -> Path:
    """A 3-epoch EGNN run on ``frames`` made with ``sciml train``; returns the run directory."""
    write(folder / "data.extxyz", frames)
    config = folder / "config.yaml"
    config.write_text(EGNN.format(data=folder / "data.extxyz", train=train, out=folder / "run"))
    assert main(["train", str(config)]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def ethanol_run(tmp_path_factory) -> Path:
    return train_egnn(tmp_path_factory.mktemp("ethanol"), read(ETHANOL, ":40"), 24)


@pytest.fixture(scope="module")
def copper_run(tmp_path_factory) -> Path:
    """EGNN on rattled and strained 4-atom Cu cells labelled by EMT (energy, forces, stress)."""
    from sciml.data.generators import perturbed_crystals

    frames = perturbed_crystals([bulk("Cu", "fcc", a=3.61, cubic=True)], copies=32, rattle=0.05, strain=0.03, seed=0)
    return train_egnn(tmp_path_factory.mktemp("copper"), frames, 16)


@pytest.fixture(scope="module")
def comformer_run(tmp_path_factory) -> Path:
    """A 1-epoch iComFormer formation-energy model on 80 of the EMT crystals (JARVIS format)."""
    folder = tmp_path_factory.mktemp("comformer")
    (folder / "dft_3d.json").write_text(json.dumps(json.loads(CRYSTALS.read_text())[:80]))
    args = ["train", str(CRYSTAL_CONFIG), "--output-dir", str(folder / "run"), "--set", f"data.path={folder / 'dft_3d.json'}",
            "--set", "epochs=1", "--set", "batch_size=16",
            "--set", "model.options={target: formation_energy_peratom, features: 16, rbf_bins: 16, fc_features: 16, k: 8}"]
    assert main(args) == 0
    return folder / "run"


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def test_learning_curves_are_a_grid_with_units_and_the_best_epoch(tmp_path):
    path = tmp_path / "metrics.csv"
    columns = ["epoch", "train_loss", "valid_loss", "valid_energy_mae_meV_per_atom", "valid_forces_mae_meV_per_A",
               "valid_stress_mae_meV_per_A3", "valid_formation_energy_peratom_mae", "valid_band_gap_mse", "lr",
               "epoch_time_s"]
    valid_loss = [3.0, 1.0, 0.5, 0.7, 0.6]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for epoch, loss in enumerate(valid_loss, start=1):
            writer.writerow([epoch, 2.0 / epoch, loss, 10.0 / epoch, 50.0 / epoch, 6.241509 / epoch, 0.1 / epoch,
                             0.04, 1e-3 / epoch, 0.5])
    fig = curves_figure(read_metrics(path), units={"band_gap": "eV"})
    axes = visible_axes(fig)
    labels = [ax.get_ylabel() for ax in axes]
    assert labels == ["loss (dimensionless)", "energy MAE (meV/atom)", "forces MAE (meV/Å)", "stress MAE (GPa)",
                      "MAE (eV/atom)", "band gap RMSE (eV)", "learning rate"]
    titles = [ax.get_title() for ax in axes]
    assert titles[0] == "Loss" and titles[4] == "Formation energy per atom MAE" and "_" not in "".join(titles)
    assert axes[0].get_yscale() == "log"
    assert {line.get_label() for line in axes[0].get_lines()} >= {"train", "valid"}
    # units converted: 6.241509 meV/Å^3 is 1 GPa; an MSE of 0.04 eV^2 is an RMSE of 0.2 eV
    assert axes[3].get_lines()[0].get_ydata()[0] == pytest.approx(1.0, rel=1e-6)
    assert np.allclose(axes[5].get_lines()[0].get_ydata(), 0.2)
    # at most three columns, ~4 x 3 inches a panel
    width, height = fig.get_size_inches()
    assert (width, height) == pytest.approx((12.0, 9.0))
    assert len({round(ax.get_position().x0, 3) for ax in axes}) == 3
    best = 1 + int(np.argmin(valid_loss))
    for ax in axes:
        marks = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [best, best]
    legend = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert f"best epoch {best} (valid loss 0.5)" in legend
    matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_curves_of_a_trained_run(ethanol_run, tmp_path, capsys):
    output = tmp_path / "curves.png"
    assert main(["plot", "curves", str(ethanol_run), "--output", str(output)]) == 0
    assert output.read_bytes()[:4] == b"\x89PNG"
    with open(ethanol_run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    metrics = [c for c in rows[0] if c.startswith("valid_") and c != "valid_loss"]
    fig = curves_figure(read_metrics(ethanol_run / "metrics.csv"), learning_rate=False)
    axes = visible_axes(fig)
    assert len(axes) == 1 + len(metrics)
    assert all(ax.get_ylabel().endswith(("(meV/atom)", "(meV)", "(meV/Å)")) for ax in axes[1:])
    best = int(min(rows, key=lambda r: float(r["valid_loss"]))["epoch"])
    assert [line.get_xdata()[0] for line in axes[0].get_lines() if line.get_linestyle() == ":"] == [best]
    matplotlib.pyplot.close(fig)


def panel_stats(run: Path, split: str = "test"):
    """The parity panels and printed numbers of ``sciml plot parity RUN`` (as its code builds them)."""
    import argparse

    from sciml.cli.plot import _property_units, parity_inputs

    args = argparse.Namespace(source=str(run), checkpoint=None, split=split, output=str(run / f"parity-{split}.png"),
                              force=True, energy_key=None, forces_key=None, stress_key=None)
    model, graphs, data, _, _ = parity_inputs(args)
    panels = parity_panels(model, graphs, prediction_keys=data.get("prediction_keys"),
                           property_units=_property_units(data))
    fig, stats = parity_figure(panels)
    return panels, fig, stats


def check_panel_figure(fig, stats) -> None:
    """Each panel prints its numbers, has units in both axis labels, a y = x line and equal axes."""
    for ax, (name, numbers) in zip(visible_axes(fig), stats.items()):
        assert [text.get_text() for text in ax.texts] == [numbers["text"]]
        assert ax.get_xlabel().startswith("reference") and ax.get_ylabel().startswith("predicted")
        assert ax.get_xlabel().endswith(")") and ax.get_ylabel().endswith(")")
        assert ax.get_xlim() == ax.get_ylim() and ax.get_aspect() == 1.0
        diagonal = [line for line in ax.get_lines() if line.get_label() == "y = x"]
        assert len(diagonal) == 1 and list(diagonal[0].get_xdata()) == list(diagonal[0].get_ydata())
    matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_parity_numbers_are_the_trainers_test_metrics(ethanol_run, tmp_path, capsys):
    panels, fig, stats = panel_stats(ethanol_run)
    assert list(stats) == ["energy", "forces"]
    check_panel_figure(fig, stats)
    model = json.loads((ethanol_run / "test_metrics.json").read_text())["model"]
    # the trainer subtracts float32 total energies (~300 eV: 3e-5 eV steps), the plot float64 ones
    assert stats["energy"]["mae"] == pytest.approx(model["energy_mae_meV_per_atom"], abs=0.01)
    assert stats["energy"]["rmse"] == pytest.approx(model["energy_rmse_meV_per_atom"], abs=0.01)
    assert stats["forces"]["mae"] == pytest.approx(model["forces_mae_meV_per_A"], rel=1e-5)
    assert stats["forces"]["rmse"] == pytest.approx(model["forces_rmse_meV_per_A"], rel=1e-5)
    assert stats["energy"]["count"] == 8 and stats["forces"]["count"] == 8 * 9 * 3
    assert "MAE  " in stats["energy"]["text"] and "meV/atom" in stats["energy"]["text"]
    output = tmp_path / "parity.png"
    capsys.readouterr()
    assert main(["plot", "parity", str(ethanol_run), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert f"energy: MAE {stats['energy']['mae']:.4g} meV/atom" in out and output.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_stress_panel_of_a_periodic_energy_model(copper_run):
    from sciml.inference import load_model, predict

    panels, fig, stats = panel_stats(copper_run)
    assert list(stats) == ["energy", "forces", "stress"]
    check_panel_figure(fig, stats)
    assert stats["stress"]["unit"] == "GPa" and stats["stress"]["count"] == 8 * 6
    # independently: the calculator path (sciml.inference.predict on ase.Atoms) against the EMT labels
    frames = read(copper_run.parent / "data.extxyz", ":")
    test = [frames[k] for k in json.loads((copper_run / "splits.json").read_text())["test"]]
    results = predict(test, load_model(copper_run / "best.pt"))
    rows, columns = zip(*VOIGT)
    reference = np.concatenate([a.get_stress(voigt=False)[rows, columns] for a in test]) / units.GPa
    predicted = np.concatenate([r["stress"][rows, columns] for r in results]) / units.GPa
    assert GPA_PER_EV_PER_A3 == pytest.approx(1 / units.GPa, rel=1e-6)
    assert stats["stress"]["mae"] == pytest.approx(np.abs(predicted - reference).mean(), rel=1e-4)
    assert stats["stress"]["rmse"] == pytest.approx(np.sqrt(((predicted - reference) ** 2).mean()), rel=1e-4)
    assert np.allclose(panels["stress"].reference, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_property_panel_of_a_comformer_model(comformer_run, tmp_path, capsys):
    panels, fig, stats = panel_stats(comformer_run)
    assert list(stats) == ["formation_energy_peratom"]
    check_panel_figure(fig, stats)
    assert panels["formation_energy_peratom"].title == "Formation energy per atom"
    assert stats["formation_energy_peratom"]["unit"] == "eV/atom"
    metrics = json.loads((comformer_run / "test_metrics.json").read_text())["model"]
    assert stats["formation_energy_peratom"]["mae"] == pytest.approx(metrics["formation_energy_peratom_mae"], rel=1e-5)
    assert stats["formation_energy_peratom"]["rmse"] == pytest.approx(
        metrics["formation_energy_peratom_mse"] ** 0.5, rel=1e-5)
    output = tmp_path / "parity.png"
    assert main(["plot", "parity", str(comformer_run), "--split", "valid", "--output", str(output)]) == 0
    assert output.read_bytes()[:4] == b"\x89PNG"
    curves = tmp_path / "curves.png"
    assert main(["plot", "curves", str(comformer_run), "--output", str(curves)]) == 0

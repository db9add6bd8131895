"""The crystal workflow end to end on the shipped EMT crystals: iComFormer trained through the
CLI on the JARVIS file with the ALIGNN split beats the mean baseline; the MatBench protocol uses
the official-style folds; `sciml predict` prints a property table for CIFs and skips bad ones."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
from ase.io import write

from sciml.cli.main import main
from sciml.data.crystals import alignn_split, matbench_folds, read_jarvis

pytestmark = pytest.mark.slow  # end-to-end training and relaxation runs

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "datasets" / "crystals_emt"
CONFIG = ROOT / "workflows" / "crystals" / "emt_small.yaml"
SMALL = ["model.options={target: formation_energy_peratom, features: 32, rbf_bins: 32, fc_features: 32, k: 12}",
         "batch_size=32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crystals")
    args = ["train", str(CONFIG), "--output-dir", str(folder / "jarvis"), "--set", f"data.path={DATA / 'dft_3d.json'}",
            "--set", "epochs=12"]
    for override in SMALL:
        args += ["--set", override]
    assert main(args) == 0
    return folder


def test_training_beats_the_mean_baseline(run):
    splits = json.loads((run / "jarvis" / "splits.json").read_text())
    expected = alignn_split(518, 0.8, 0.1, 0.1, seed=123)
    assert {name: splits[name] for name in ("train", "valid", "test")} == expected
    metrics = json.loads((run / "jarvis" / "test_metrics.json").read_text())
    model_mae = metrics["model"]["formation_energy_peratom_mae"]
    baseline = metrics["baselines"]["mean_formation_energy_peratom_mae"]
    assert model_mae < 0.6 * baseline, (model_mae, baseline)


def test_predict_prints_a_property_table_and_skips_bad_cifs(run, tmp_path, capsys):
    records = read_jarvis(DATA / "dft_3d.json")[:3]
    paths = []
    for record in records:
        paths.append(tmp_path / f"{record.id}.cif")
        write(paths[-1], record.atoms)
    bad = tmp_path / "overlapping.cif"
    atoms = records[0].atoms.copy()
    atoms.positions[1] = atoms.positions[0] + 0.1
    write(bad, atoms)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "jarvis" / "best.pt"), *map(str, paths), str(bad)]) == 0
    out, err = capsys.readouterr()
    runtime, *lines = out.strip().splitlines()
    assert runtime.startswith("device cpu") and "formation_energy_peratom" in lines[0] and len(lines) == 4
    assert records[0].id in out and "overlapping.cif" not in out
    assert "overlapping.cif" in err and "closer than" in err


def test_eval_reads_the_training_format(run, capsys):
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "jarvis" / "best.pt"), str(DATA / "dft_3d.json")]) == 0
    assert "formation_energy_peratom_mae" in capsys.readouterr().out


def test_check_runs_the_symmetry_checks_of_a_property_model(run, capsys):
    capsys.readouterr()
    assert main(["check", str(run / "jarvis" / "best.pt")]) == 0
    out = capsys.readouterr().out
    assert "skipping C2H6O" in out and "supercell" in out and "reflection" not in out and "PASS" in out


def test_matbench_protocol_uses_the_official_folds(tmp_path, monkeypatch, capsys):
    output = tmp_path / "matbench"
    argv = ["matbench.py", str(CONFIG), "--folds", "0", "3",
            "--set", f"data.path={DATA / 'matbench_formation_energy_peratom.json.gz'}", "--set", "data.format=matbench",
            "--set", "epochs=1", "--set", f"output_dir={output}"] + [a for o in SMALL for a in ("--set", o)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "workflows" / "crystals" / "matbench.py"), run_name="__main__")
    assert done.value.code == 0
    folds = matbench_folds(518)
    for fold in (0, 3):
        splits = json.loads((output / f"fold_{fold}" / "splits.json").read_text())
        assert sorted(splits["test"]) == sorted(folds[fold][1].tolist())
        assert not set(splits["train"] + splits["valid"]) & set(splits["test"])
    scores = json.loads((output / "matbench_scores.json").read_text())
    assert set(scores["fold_mae"]) == {"0", "3"} and scores["std_mae"] >= 0
    assert "MatBench formation_energy_peratom: MAE" in capsys.readouterr().out


def test_energy_model_relaxes_crystals_with_the_cell_filter(tmp_path):
    """iComFormer trained on EMT energies, forces and stresses of perturbed crystals relaxes
    held-out perturbed crystals (positions and cell, FrechetCellFilter) to lower EMT energies."""
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from sciml.calculator import SciMLCalculator
    from sciml.data.generators import perturbed_crystals
    from sciml.inference import load_model
    from sciml.io.files import write_extxyz
    from sciml.train import load_config, train

    crystals = [r.atoms for r in read_jarvis(DATA / "dft_3d.json")[:120] if len(r.atoms) <= 4][:44]
    write_extxyz(tmp_path / "perturbed.extxyz", perturbed_crystals(crystals[:-4], copies=6, seed=0))
    config = load_config(ROOT / "workflows" / "crystals" / "emt_energy_small.yaml", [
        f"data.path={tmp_path / 'perturbed.extxyz'}", f"output_dir={tmp_path / 'run'}", "epochs=40",
        "model.options={target: energy, features: 32, fc_features: 32, k: 12}"])
    result = train(config, verbose=False)
    assert result.test_metrics["forces_mae_meV_per_A"] < 0.5 * result.baseline_metrics["zero_forces_mae_meV_per_A"]
    model = load_model(tmp_path / "run" / "best.pt")
    gains = []
    for start in perturbed_crystals(crystals[-4:], copies=1, rattle=0.08, strain=0.04, seed=1):
        atoms = start.copy()
        atoms.calc = SciMLCalculator(model)
        FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=0.05, steps=300)
        assert abs(atoms.get_stress()).max() < 0.05  # eV/Å^3: the model's stress is relaxed
        atoms.calc = EMT()
        gains.append((start.get_potential_energy() - atoms.get_potential_energy()) / len(atoms))
    assert sum(g > 0 for g in gains) >= 3 and sum(gains) > 0, gains  # eV/atom, EMT's judgement

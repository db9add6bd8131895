"""The EGNN n-body workflow (workflows/nbody): data preparation, fixed split, training a model
that predicts positions (no energy head) through the trainer."""

import importlib.util
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml

from sciml.data.generators.nbody import simulate_charged_nbody
from sciml.data.readers import load_graph_dataset
from sciml.train import Trainer, evaluate, load_config

WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "nbody"
SETS = (("train", 0, 200), ("valid", 250, 60), ("test", 310, 40))  # a miniature of the reference's sets


def _prepare_module():
    spec = importlib.util.spec_from_file_location("nbody_prepare", WORKFLOW / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare = _prepare_module()


@pytest.fixture(scope="module")
def sim():
    return simulate_charged_nbody(350, seed=43)


@pytest.fixture(scope="module")
def dataset(sim, tmp_path_factory):
    """The miniature set written as extxyz, and its split ranges."""
    selected, ranges = prepare.select_sets(sim, SETS)
    path = tmp_path_factory.mktemp("nbody") / "nbody.extxyz"
    ase.io.write(path, prepare.nbody_frames(selected), format="extxyz")
    return path, ranges


def config_for(path: Path, ranges, output_dir: Path, *overrides: str):
    """The workflow's config with the data, split and length of a quick run."""
    values = yaml.safe_load((WORKFLOW / "egnn_nbody.yaml").read_text())
    values["data"]["path"] = str(path)
    values["split"] = {"ranges": ranges}
    values["output_dir"] = str(output_dir)
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()] + list(overrides))


def test_prepare_writes_inputs_targets_and_reference_split(sim, dataset):
    path, ranges = dataset
    assert ranges == {"train": [0, 200], "valid": [200, 260], "test": [260, 300]}
    assert prepare.REFERENCE_SETS == (("train", 0, 3000), ("valid", 10000, 2000), ("test", 12000, 2000))
    graphs = load_graph_dataset(path, 1e3, energy_key=None, forces_key=None, stress_key=None,
                                property_keys=["velocities", "charges", "positions_target"])
    assert len(graphs) == 300
    # frame 200 of the file is simulation 250 (first of "valid"), at frames 30 and 40
    graph = graphs[200]
    assert graph.energy is None and not bool(graph.pbc.any())
    assert graph.num_edges == 20  # 5 particles, fully connected
    assert tuple(graph.atom_properties["velocities"].shape) == (5, 3)
    assert tuple(graph.atom_properties["positions_target"].shape) == (5, 3)
    assert graph.atom_properties["charges"].numel() == 5
    np.testing.assert_allclose(graph.positions.numpy(), sim["loc"][250, 30], atol=1e-6)
    np.testing.assert_allclose(graph.atom_properties["velocities"].numpy(), sim["vel"][250, 30], atol=1e-6)
    np.testing.assert_allclose(graph.atom_properties["positions_target"].numpy(), sim["loc"][250, 40], atol=1e-6)
    np.testing.assert_allclose(graph.atom_properties["charges"].numpy().ravel(), sim["charges"][250, :, 0])
    with pytest.raises(ValueError, match="need more"):
        prepare.select_sets(sim, (("train", 0, 400),))


@pytest.mark.slow
def test_training_positions_beats_constant_position_baseline(dataset, tmp_path, capsys):
    path, ranges = dataset
    config = config_for(path, ranges, tmp_path / "run", "epochs=6", "batch_size=20", "optimizer.lr=1e-3",
                        "model.options={hidden: 32, layers: 3}")
    trainer = Trainer(config, verbose=False)
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits["train"] == list(range(200)) and splits["valid"] == list(range(200, 260))
    assert splits["test"] == list(range(260, 300))
    assert trainer.statistics["element_energies"] is None

    frames = ase.io.read(path, index="200:260")
    baseline = prepare.constant_position_mse(frames)  # predict x(t + 1000 steps) = x(t)
    before = evaluate(trainer.model, trainer.valid_set, 60, prediction_keys=config.data.prediction_keys)
    result = trainer.fit()
    after = result.valid_metrics
    assert {"positions_target_mse", "positions_target_mae"} <= set(after)
    assert after["positions_target_mse"] < 0.5 * baseline
    assert after["positions_target_mse"] < before["positions_target_mse"]
    assert result.test_metrics["positions_target_mse"] < prepare.constant_position_mse(ase.io.read(path, index="260:300"))
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "valid_positions_target_mse" in header

    # `sciml eval` takes the label keys from the checkpoint's training config.
    from sciml.cli.main import main

    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), str(path)]) == 0
    printed = capsys.readouterr().out
    assert "positions_target_mse" in printed and "(300 structures)" in printed


@pytest.mark.slow
def test_split_ranges_and_property_models_are_checked(dataset, tmp_path):
    path, ranges = dataset
    with pytest.raises(ValueError, match="overlapping"):
        config_for(path, {"train": [0, 200], "valid": [150, 260]}, tmp_path / "a")
    with pytest.raises(ValueError, match="needs train and valid"):
        config_for(path, {"train": [0, 200]}, tmp_path / "b")
    with pytest.raises(ValueError, match="holds 300 structures"):
        Trainer(config_for(path, {"train": [0, 200], "valid": [200, 400]}, tmp_path / "c"), verbose=False)
    with pytest.raises(ValueError, match="no energy head"):
        Trainer(config_for(path, ranges, tmp_path / "d", "loss.properties={}"), verbose=False)
    with pytest.raises(ValueError, match="prediction_keys"):
        config_for(path, ranges, tmp_path / "e", "data.prediction_keys={positions_out: positions}")

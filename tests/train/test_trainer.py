import csv
import json
import math
from pathlib import Path

import ase.io
import pytest
import torch
import yaml

from sciml.graph import AtomicGraph
from sciml.io import load_checkpoint
from sciml.train import (
    Trainer,
    apply_overrides,
    evaluate,
    load_config,
    load_model,
    mean_baseline_metrics,
    train,
)
from sciml.train.config import SchedulerConfig
from sciml.train.optim import LearningRateSchedule

ETHANOL = Path(__file__).resolve().parents[2] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"


@pytest.fixture(scope="module")
def ethanol150(tmp_path_factory) -> Path:
    """The first 150 frames of the shipped ethanol MD (enough to learn, fast on one core)."""
    path = tmp_path_factory.mktemp("data") / "ethanol150.extxyz"
    ase.io.write(path, ase.io.read(ETHANOL, index=":150"))
    return path


def make_config(data: Path, output_dir: Path, *overrides: str):
    return load_config(None, [
        f"data.path={data}", f"output_dir={output_dir}", "model.options={hidden: 32, layers: 2}",
        "split.valid=30", "split.test=20", "batch_size=10", "grad_clip=10", *overrides,
    ])


def read_metrics(run: Path) -> list:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_training_beats_trivial_baselines(ethanol150, tmp_path):
    config = make_config(ethanol150, tmp_path / "run", "epochs=150", "optimizer.lr=5e-3", "loss.energy=5",
                         "ema_decay=0.99")
    trainer = Trainer(config, verbose=False)
    result = trainer.fit()
    baseline = mean_baseline_metrics(trainer.train_set, trainer.valid_set)
    best = result.valid_metrics
    assert best["forces_mae_meV_per_A"] < 0.5 * baseline["zero_forces_mae_meV_per_A"]
    assert best["energy_mae_meV"] < 0.7 * baseline["mean_energy_mae_meV"]
    assert result.test_metrics["forces_mae_meV_per_A"] < 0.5 * result.baseline_metrics["zero_forces_mae_meV_per_A"]

    rows = read_metrics(tmp_path / "run")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 151))
    assert {"train_loss", "valid_loss", "valid_energy_mae_meV_per_atom", "valid_energy_mae_meV",
            "valid_forces_mae_meV_per_A", "valid_forces_rmse_meV_per_A", "lr", "epoch_time_s"} <= set(rows[0])
    # best.pt holds the (EMA) weights that were validated: reloading reproduces the metrics.
    model = load_model(tmp_path / "run" / "best.pt")
    again = evaluate(model, trainer.valid_set, batch_size=16)
    assert math.isclose(again["forces_mae_meV_per_A"], best["forces_mae_meV_per_A"], rel_tol=1e-4)
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["model"]["num_structures"] == 20


@pytest.mark.slow
def test_resume_after_a_crash_is_identical_to_an_uninterrupted_run(ethanol150, tmp_path, monkeypatch):
    settings = ("epochs=4", "ema_decay=0.9", "scheduler.warmup_epochs=1")
    train(make_config(ethanol150, tmp_path / "straight", *settings), verbose=False)

    original = Trainer._run_epoch

    def crash_in_epoch_3(self, epoch, signals):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch, signals)

    monkeypatch.setattr(Trainer, "_run_epoch", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(make_config(ethanol150, tmp_path / "crashed", *settings), verbose=False)
    assert load_checkpoint(tmp_path / "crashed" / "last.pt")["epoch"] == 2
    monkeypatch.setattr(Trainer, "_run_epoch", original)

    resumed = Trainer(make_config(ethanol150, tmp_path / "crashed", *settings), resume=True, verbose=False)
    assert resumed.start_epoch == 3
    resumed.fit()
    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "crashed"))
    assert b["epoch"] == 4
    for key in ("state_dict", "train_state_dict"):
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key])
    straight, crashed = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "crashed")
    assert [r["epoch"] for r in crashed] == ["1", "2", "3", "4"]
    assert [r["valid_loss"] for r in crashed] == [r["valid_loss"] for r in straight]


@pytest.mark.slow
def test_resume_extends_a_finished_run(ethanol150, tmp_path):
    run = tmp_path / "run"
    train(make_config(ethanol150, run, "epochs=2"), verbose=False)
    result = train(make_config(ethanol150, run, "epochs=4"), resume=True, verbose=False)
    assert result.last_epoch == 4 and load_checkpoint(run / "last.pt")["epoch"] == 4
    assert [int(r["epoch"]) for r in read_metrics(run)] == [1, 2, 3, 4]
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 4

    with pytest.raises(ValueError, match=r"config differs .* optimizer\.lr: 0\.001 -> 0\.01"):
        Trainer(make_config(ethanol150, run, "epochs=6", "optimizer.lr=1e-2"), resume=True)
    with pytest.raises(ValueError, match="cannot resume: .*empty has no checkpoint"):
        Trainer(make_config(ethanol150, tmp_path / "empty", "epochs=2"), resume=True)


@pytest.mark.slow
def test_a_second_run_never_overwrites_the_first(ethanol150, tmp_path):
    run = tmp_path / "run"
    train(make_config(ethanol150, run, "epochs=1"), verbose=False)
    best = (run / "best.pt").read_bytes()
    with pytest.raises(ValueError, match=f"output directory {run} already holds a run; use --resume or another directory"):
        train(make_config(ethanol150, run, "epochs=1"), verbose=False)
    assert (run / "best.pt").read_bytes() == best


@pytest.mark.slow
def test_splits_and_resolved_config_are_saved(ethanol150, tmp_path):
    config = make_config(ethanol150, tmp_path / "a", "epochs=1", "split.seed=7")
    Trainer(config, verbose=False)
    splits = json.loads((tmp_path / "a" / "splits.json").read_text())
    assert (len(splits["train"]), len(splits["valid"]), len(splits["test"])) == (100, 30, 20)
    assert sorted(splits["train"] + splits["valid"] + splits["test"]) == list(range(150))
    assert splits["seed"] == 7 and splits["num_structures"] == 150
    reloaded = load_config(tmp_path / "a" / "config.yaml")
    assert reloaded.to_dict() == config.to_dict()
    Trainer(make_config(ethanol150, tmp_path / "b", "epochs=1", "split.seed=7"), verbose=False)
    assert json.loads((tmp_path / "b" / "splits.json").read_text())["valid"] == splits["valid"]


@pytest.mark.parametrize("text, message", [
    ("data: {path: x.xyz}\noptimiser: {lr: 0.1}\n", "unknown config key 'optimiser'; did you mean 'optimizer'"),
    ("data: {path: x.xyz}\noptimizer: {lrr: 0.1}\n", "unknown config key 'optimizer.lrr'; did you mean 'optimizer.lr'"),
    ("data: {path: x.xyz}\nlr: 0.1\n", "unknown config key 'lr'; did you mean 'optimizer.lr'"),
    ("data: {path: x.xyz}\nscheduler: {name: cosin}\n", "scheduler.name must be one of .* did you mean 'cosine'"),
    ("data: {path: x.xyz}\nepochs: many\n", "epochs must be an integer"),
    ("optimizer: {lr: 0.1}\n", "missing required config key data.path"),
    ("data: [1, 2\n", "not valid YAML"),
])
def test_config_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_dotted_overrides_are_yaml_typed(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("data: {path: x.xyz}\noptimizer: {lr: 0.1}\n")
    config = load_config(path, ["optimizer.lr=1e-3", "data.property_keys=[gap, dipole]", "ema_decay=null",
                                "model.options.hidden=64", "split.valid=25", "loss.properties={gap: 2}"])
    assert config.optimizer.lr == 1e-3 and config.data.property_keys == ["gap", "dipole"]
    assert config.model.options == {"hidden": 64} and config.split.valid == 25 and config.ema_decay is None
    assert load_config(path, {"epochs": 3, "optimizer.name": "adamw"}).optimizer.name == "adamw"
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x"]) == {"a": {"b": 1, "c": "x"}}
    with pytest.raises(ValueError, match="must look like KEY=VALUE"):
        load_config(path, ["epochs"])
    with pytest.raises(ValueError, match="did you mean 'optimizer.lr'"):
        load_config(path, ["optimizer.lrate=1"])


def test_learning_rate_schedule_warms_up_then_decays():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cosine = LearningRateSchedule(optimizer, SchedulerConfig("cosine", warmup_epochs=1), steps_per_epoch=4, epochs=5)
    lrs = [cosine.apply() for _ in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[4] == 1.0 and lrs[-1] < 0.03
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    plateau = LearningRateSchedule(optimizer, SchedulerConfig("plateau", factor=0.5, patience=1), 1, 10)
    for loss in (1.0, 1.0, 1.0):
        plateau.end_epoch(loss)
    assert plateau.apply() == 0.5


@pytest.mark.slow
def test_atom_balanced_batches_respect_the_atom_budget(ethanol150, tmp_path, monkeypatch):
    seen = []
    original = AtomicGraph.collate

    def record(graphs):
        batch = original(graphs)
        seen.append((len(graphs), batch.num_nodes))
        return batch

    config = make_config(ethanol150, tmp_path / "run", "epochs=1", "batch_size=8", "batch_max_atoms=40")
    trainer = Trainer(config, verbose=False)
    monkeypatch.setattr(AtomicGraph, "collate", staticmethod(record))
    trainer._run_epoch(1)
    training = seen[: len(trainer.sampler)]
    # ethanol has 9 atoms: 4 structures (36 atoms) fit in 40, a fifth would not.
    assert all(atoms <= 40 and count <= 4 for count, atoms in training)
    assert sum(count for count, _ in training) >= len(trainer.train_set)


@pytest.mark.slow
def test_resume_accepts_a_run_saved_before_new_config_keys(ethanol150, tmp_path):
    """A checkpoint whose stored config lacks keys added later (here the fields section) resumes:
    missing keys take their defaults."""
    from sciml.io.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "old"
    Trainer(make_config(ethanol150, run, "epochs=1"), verbose=False).fit()
    checkpoint = load_checkpoint(run / "last.pt")
    del checkpoint["train_config"]["fields"]
    save_checkpoint(run / "last.pt", **checkpoint)
    result = Trainer(make_config(ethanol150, run, "epochs=2"), resume=True, verbose=False).fit()
    assert result.last_epoch == 2

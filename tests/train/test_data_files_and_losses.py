"""Separate train/valid/test files, per-target loss functions (mse, mae, huber) with weights and
the per-element reference energies (fit, zero, given) of the trainer."""

import csv
import json
from pathlib import Path

import ase.io
import pytest
import torch
import torch.nn.functional as F

from sciml.cli.main import main
from sciml.models import build_model
from sciml.models.heads import EnergyHead
from sciml.train import Trainer, load_config, train
from sciml.train.atomistic import AtomisticProblem

ETHANOL = Path(__file__).resolve().parents[2] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"
MODEL = "model.options={hidden: 16, layers: 1}"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Frames 0-59 of the ethanol MD as train.extxyz, 60-79 as valid, 80-99 as test (and all
    100 in one file); ``energies`` maps each file to its energies (eV), which identify frames."""
    folder = tmp_path_factory.mktemp("data")
    frames = ase.io.read(ETHANOL, index=":100")
    parts = {"train": frames[:60], "valid": frames[60:80], "test": frames[80:]}
    paths = {}
    for name, part in parts.items():
        paths[name] = folder / f"{name}.extxyz"
        ase.io.write(paths[name], part)
    paths["all"] = folder / "all.extxyz"
    ase.io.write(paths["all"], frames)
    paths["energies"] = {name: [a.get_potential_energy() for a in part] for name, part in parts.items()}
    return paths


def config_for(output_dir: Path, *overrides: str):
    return load_config(None, [f"output_dir={output_dir}", MODEL, "batch_size=10", "dtype=float64", *overrides])


def energies(graphs) -> list:
    return sorted(float(g.energy) for g in graphs)


def read_metrics(run: Path) -> list:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- separate files


def test_separate_files_are_exactly_the_train_valid_and_test_sets(files, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(config_for(run, f"data.train={files['train']}", f"data.valid={files['valid']}",
                                 f"data.test={files['test']}"), verbose=False)
    for name in ("train", "valid", "test"):
        assert energies(getattr(trainer, f"{name}_set")) == sorted(files["energies"][name])
    saved = json.loads((run / "splits.json").read_text())
    assert saved["files"] == {name: str(files[name]) for name in ("train", "valid", "test")}
    assert sorted(saved["train"]) == list(range(60))
    assert saved["valid"] == list(range(20)) and saved["test"] == list(range(20))
    assert saved["file_structures"] == {str(files["train"]): 60, str(files["valid"]): 20, str(files["test"]): 20}


@pytest.mark.slow
def test_a_set_without_its_file_is_drawn_from_the_train_file(files, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(config_for(run, f"data.train={files['train']}", f"data.test={files['test']}",
                                 "split.valid=15", "split.test=0.1"), verbose=False)
    train_energies = files["energies"]["train"]
    assert len(trainer.valid_set) == 15 and len(trainer.train_set) == 45
    assert set(energies(trainer.valid_set)) | set(energies(trainer.train_set)) == set(train_energies)
    assert not set(energies(trainer.valid_set)) & set(energies(trainer.train_set))
    assert energies(trainer.test_set) == sorted(files["energies"]["test"])  # the file wins over split.test
    saved = json.loads((run / "splits.json").read_text())
    assert saved["files"]["valid"] == saved["files"]["train"] == str(files["train"])
    assert sorted(float(train_energies[i]) for i in saved["valid"]) == energies(trainer.valid_set)

    only_train = Trainer(config_for(tmp_path / "only", f"data.train={files['train']}", "split.valid=10",
                                    "split.test=0"), verbose=False)
    assert (len(only_train.train_set), len(only_train.valid_set), len(only_train.test_set)) == (50, 10, 0)


def test_data_path_splits_json_keeps_its_indices(files, tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(config_for(run, f"data.path={files['all']}", "split.valid=20", "split.test=10"), verbose=False)
    saved = json.loads((run / "splits.json").read_text())
    assert saved["data_path"] == str(files["all"]) and saved["num_structures"] == 100
    assert set(saved["files"].values()) == {str(files["all"])}
    assert [float(trainer.samples[i].energy) for i in saved["valid"]] == [float(g.energy) for g in trainer.valid_set]


@pytest.mark.slow
def test_training_on_separate_files_lowers_the_loss_tests_on_data_test_and_resumes(files, tmp_path, capsys):
    """EGNN sits on a plateau for a few hundred steps here before it learns the forces (as with
    mse): 50 epochs of 12 batches."""
    run = tmp_path / "run"
    settings = (f"data.train={files['train']}", f"data.valid={files['valid']}", f"data.test={files['test']}",
                "loss.functions={energy: huber, forces: mae}", "loss.huber_delta=0.01", "optimizer.lr=5e-3",
                "dtype=float32", "model.options={hidden: 32, layers: 2}", "batch_size=5", "grad_clip=10")
    result = train(config_for(run, "epochs=50", *settings), verbose=False)
    rows = read_metrics(run)
    assert float(rows[-1]["valid_loss"]) < 0.7 * float(rows[0]["valid_loss"])
    assert float(rows[-1]["train_loss"]) < 0.7 * float(rows[0]["train_loss"])
    assert float(rows[-1]["valid_forces_mae_meV_per_A"]) < 0.7 * float(rows[0]["valid_forces_mae_meV_per_A"])
    assert result.test_metrics["num_structures"] == 20  # all of data.test
    assert json.loads((run / "test_metrics.json").read_text())["model"]["num_structures"] == 20
    assert main(["plot", "parity", str(run), "--output", str(tmp_path / "parity.png")]) == 0  # of data.test
    assert "(20 structures)" in capsys.readouterr().out

    resumed = Trainer(config_for(run, "epochs=51", *settings), resume=True, verbose=False)
    assert energies(resumed.valid_set) == pytest.approx(sorted(files["energies"]["valid"]), rel=1e-7)  # float32
    assert resumed.start_epoch == 51 and resumed.fit().last_epoch == 51

    ase.io.write(files["valid"].parent / "valid_short.extxyz", ase.io.read(files["valid"], index=":10"))
    shorter = [s.replace(str(files["valid"]), str(files["valid"].parent / "valid_short.extxyz")) for s in settings]
    with pytest.raises(ValueError, match="config differs .*data.valid"):
        Trainer(config_for(run, "epochs=52", *shorter), resume=True, verbose=False)


@pytest.mark.slow
def test_resume_refuses_a_data_file_that_changed(files, tmp_path):
    valid = tmp_path / "valid.extxyz"
    valid.write_bytes(files["valid"].read_bytes())
    settings = (f"data.train={files['train']}", f"data.valid={valid}")
    train(config_for(tmp_path / "run", "epochs=1", *settings), verbose=False)
    ase.io.write(valid, ase.io.read(files["valid"], index=":10"))
    with pytest.raises(ValueError, match=f"cannot resume: {valid} now holds 10 structures, the run was split over 20"):
        Trainer(config_for(tmp_path / "run", "epochs=2", *settings), resume=True, verbose=False)


# ----------------------------------------------------------------------------- losses


@pytest.fixture(scope="module")
def hand_batch(files):
    """A problem whose loss scales are 1 (so losses are in label units) and a batch of 3
    ethanol structures with hand-made predictions (errors of every sign and size)."""
    def make(*overrides: str, scales: float = 1.0):
        config = config_for(Path("unused"), f"data.path={files['valid']}", *overrides)
        problem = AtomisticProblem(config, build_model("egnn", hidden=16, layers=1), torch.float64)
        problem.statistics = {"energy_scale": scales, "forces_rms": scales, "stress_rms": scales}
        return problem

    graphs = make().load()[:3]
    batch = graphs[0].collate(graphs)
    generator = torch.Generator().manual_seed(0)
    out = {"energy": batch.energy + torch.tensor([0.05, -0.004, 0.3], dtype=torch.float64),
           "forces": batch.forces + 0.05 * torch.randn(batch.forces.shape, generator=generator, dtype=torch.float64)}
    return make, batch, out


def test_huber_loss_equals_torch_huber_loss(hand_batch):
    make, batch, out = hand_batch
    atoms = batch.num_atoms_per_graph.double()
    energy = make("loss.forces=0", "loss.function=huber", "loss.huber_delta=0.01").loss(batch, out)
    assert torch.allclose(energy, F.huber_loss(out["energy"] / atoms, batch.energy / atoms, delta=0.01))
    forces = make("loss.energy=0", "loss.forces=1", "loss.functions={forces: huber}",
                  "loss.huber_delta={forces: 0.03}").loss(batch, out)
    assert torch.allclose(forces, F.huber_loss(out["forces"], batch.forces, delta=0.03))
    # errors are compared in units of the training-set scale, the delta with them: Huber / scale^2
    scaled = make("loss.forces=0", "loss.function=huber", "loss.huber_delta=0.01", scales=2.0).loss(batch, out)
    assert torch.allclose(scaled, energy / 4)


def test_mae_and_mse_are_mean_absolute_and_squared_errors(hand_batch):
    make, batch, out = hand_batch
    atoms = batch.num_atoms_per_graph.double()
    energy_error, forces_error = (out["energy"] - batch.energy) / atoms, out["forces"] - batch.forces
    mae = make("loss.forces=0", "loss.functions={energy: mae}").loss(batch, out)
    assert torch.allclose(mae, energy_error.abs().mean())
    mae = make("loss.energy=0", "loss.forces=1", "loss.function=mae").loss(batch, out)
    assert torch.allclose(mae, forces_error.abs().mean())
    mse = make("loss.energy=0", "loss.forces=1").loss(batch, out)  # the default, as before
    assert torch.allclose(mse, forces_error.square().mean())
    oc20 = make("loss.forces=0", "loss.function=oc20", scales=2.0).loss(batch, out)  # total-energy MAE
    assert torch.allclose(oc20, (out["energy"] - batch.energy).abs().mean() / 2)


def test_weights_scale_the_loss_terms(hand_batch):
    make, batch, out = hand_batch
    functions = "loss.functions={energy: huber, forces: mae}"
    energy = make("loss.energy=1", "loss.forces=0", functions).loss(batch, out)
    forces = make("loss.energy=0", "loss.forces=1", functions).loss(batch, out)
    both = make("loss.energy=3", "loss.forces=10", functions).loss(batch, out)
    assert energy > 0 and forces > 0
    assert torch.allclose(both, 3 * energy + 10 * forces)


# ----------------------------------------------------------------------------- element energies


def energy_head(trainer: Trainer) -> EnergyHead:
    return next(m for m in trainer.model.modules() if isinstance(m, EnergyHead))


@pytest.mark.slow
def test_element_energies_fit_zero_and_given(files, tmp_path):
    data = f"data.path={files['all']}"
    fitted = energy_head(Trainer(config_for(tmp_path / "fit", data), verbose=False)).element_energies
    assert fitted[[1, 6, 8]].abs().min() > 0  # least squares: H, C, O

    zero = Trainer(config_for(tmp_path / "zero", data, "data.element_energies=zero"), verbose=False)
    assert torch.count_nonzero(energy_head(zero).element_energies) == 0

    given = {"H": -13.6, "C": -1029.5, "O": -432.1, "N": -1500.25}
    trainer = Trainer(config_for(tmp_path / "given", data, f"data.element_energies={json.dumps(given)}"), verbose=False)
    buffer = energy_head(trainer).element_energies
    expected = torch.zeros_like(buffer)
    expected[[1, 6, 8, 7]] = torch.tensor(list(given.values()), dtype=buffer.dtype)
    assert torch.equal(buffer, expected)  # exactly the given values, N too; nothing else
    assert trainer.statistics["element_energies"][1] == -13.6
    assert load_config(tmp_path / "given" / "config.yaml").data.element_energies == given  # the saved config reloads

    with pytest.raises(ValueError, match="data.element_energies has no energy for O, which the data holds") as error:
        Trainer(config_for(tmp_path / "missing", data, "data.element_energies={H: -13.6, C: -1029.5}"), verbose=False)
    assert "\n" not in str(error.value)


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("overrides, message", [
    (["loss.function=l1"], "config key loss.function must be one of mse, mae, huber, oc20, got 'l1'"),
    (["loss.functions={forces: hubber}"], "config key loss.functions.forces must be one of mse, mae, huber, got "
                                          "'hubber'; did you mean 'huber'"),
    (["loss.functions={dipole: mae}"], "config key loss.functions.dipole: 'dipole' is not a loss term"),
    (["loss.huber_delta=0"], "config key loss.huber_delta must be positive, got 0"),
    (["loss.huber_delta={energy: -0.1}"], "config key loss.huber_delta.energy must be positive"),
    (["loss.function=huber", "loss.huber_delta={forces: 0.1}"],
     "config key loss.huber_delta has no delta for 'energy'"),
    (["data.train=b.xyz"], "config keys data.path and data.train exclude each other"),
    (["data.path=null", "data.valid=v.xyz"], "config key data.valid needs data.train"),
    (["data.element_energies=fitted"], "config key data.element_energies must be fit, zero, refit, keep or a mapping"),
    (["data.element_energies={Hx: 1.0}"], "config key data.element_energies has 'Hx', which is not an element symbol"),
    (["data.path=null", "data.train=t.xyz", "split.method=matbench"], "config keys split.ranges and split.method"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as error:
        load_config(None, ["data.path=a.xyz", *overrides])
    assert "\n" not in str(error.value)


def test_missing_train_file_exits_2_with_one_line(files, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {{train: {tmp_path / 'nope.extxyz'}, valid: {files['valid']}}}\n"
                      f"model: {{name: egnn, options: {{hidden: 16, layers: 1}}}}\noutput_dir: {tmp_path / 'run'}\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # after the 'reading ...' line
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("sciml train: error: config key data.train:") and "nope.extxyz does not exist" in err[-1]

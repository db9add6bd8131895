"""Fine-tuning (``init_from``, sciml.train.finetune): a new run from a trained model's weights.

The parent is a tiny EGNN trained on ethanol frames whose oxygen is relabelled as nitrogen, so
the shipped frames (with O) bring an element the parent never saw."""

import hashlib
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from sciml.cli.info import describe
from sciml.cli.main import main
from sciml.inference import load_model
from sciml.io.checkpoint import load_checkpoint, save_checkpoint
from sciml.models import build_model
from sciml.models.contract import model_entry
from sciml.train import Trainer, finetune, load_config, train

ETHANOL = Path(__file__).resolve().parents[2] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"
TINY = "model.options={hidden: 8, layers: 1}"
SPLIT = ("split.valid=5", "split.test=5", "batch_size=10")


def _write(path: Path, frames, **info) -> Path:
    for atoms in frames:
        atoms.info.update(info)
    ase.io.write(path, frames)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """``parent``: frames 0-29 with O as N; ``new``: frames 30-59 as shipped (H C O); ``same``:
    frames 30-59 with O as N (the parent's elements); ``gap``: ``new`` with an info label."""
    folder = tmp_path_factory.mktemp("finetune-data")
    frames = ase.io.read(ETHANOL, index=":60")

    def as_nitrogen(selection):
        out = []
        for atoms in selection:
            copy = atoms.copy()
            copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
            copy.numbers[copy.numbers == 8] = 7
            out.append(copy)
        return out

    return {"parent": _write(folder / "parent.extxyz", as_nitrogen(frames[:30])),
            "new": _write(folder / "new.extxyz", frames[30:60]),
            "same": _write(folder / "same.extxyz", as_nitrogen(frames[30:60])),
            "gap": _write(folder / "gap.extxyz", ase.io.read(ETHANOL, index="30:60"), gap=1.5)}


@pytest.fixture(scope="module")
def parent(data, tmp_path_factory) -> Path:
    """best.pt of a 2-epoch tiny EGNN on the N-relabelled frames."""
    run = tmp_path_factory.mktemp("parent") / "run"
    train(load_config(None, [f"data.path={data['parent']}", f"output_dir={run}", TINY, "epochs=2", *SPLIT]),
          verbose=False)
    return run / "best.pt"


def tune(data: Path, parent: Path, output_dir: Path, *overrides: str):
    return load_config(None, [f"data.path={data}", f"output_dir={output_dir}", f"init_from={parent}", "epochs=2",
                              *SPLIT, *overrides])


def weights(path: Path) -> dict:
    return load_checkpoint(path)["state_dict"]


def test_model_and_options_come_from_the_parent_and_shape_keeping_options_may_change(data, parent, tmp_path):
    trainer = Trainer(tune(data["new"], parent, tmp_path / "ft", "model.options={cutoff: 4.5}"), verbose=False)
    saved = load_config(tmp_path / "ft" / "config.yaml")
    assert saved.model.name == "egnn" and saved.model.options["hidden"] == 8 and saved.model.options["cutoff"] == 4.5
    assert saved.optimizer.lr == 1e-3 and saved.data.element_energies == "refit"  # shown, not chosen silently
    assert trainer.model.cutoff == 4.5
    theirs = weights(parent)
    assert all(torch.equal(value, theirs[name]) for name, value in trainer.model.state_dict().items()
               if not name.startswith("head."))


def test_new_elements_get_their_untrained_rows_and_the_domain_is_the_union(data, parent, tmp_path):
    torch.manual_seed(0)  # the parent's run seeds before building the model
    initial = build_model("egnn", hidden=8, layers=1).embedding.weight.detach()
    oxygen = weights(parent)["embedding.weight"][8]
    assert torch.equal(oxygen, initial[8])  # the parent never saw O: its row is the initial value
    assert not torch.equal(weights(parent)["embedding.weight"][7], initial[7])  # N was trained
    train(tune(data["new"], parent, tmp_path / "ft"), verbose=False)
    tuned = load_checkpoint(tmp_path / "ft" / "best.pt")
    assert not torch.equal(tuned["state_dict"]["embedding.weight"][8], oxygen)  # now trained
    assert tuned["domain"]["elements"] == [1, 6, 7, 8]
    assert "new elements O" in (tmp_path / "ft" / "train.log").read_text()


def test_refit_references_are_the_least_squares_fit_of_the_new_training_set(data, parent, tmp_path):
    trainer = Trainer(tune(data["new"], parent, tmp_path / "ft"), verbose=False)
    frames = ase.io.read(data["new"], index=":")
    train_set = [frames[i] for i in trainer.splits["train"]]
    counts = np.array([[np.sum(a.numbers == z) for z in (1, 6, 8)] for a in train_set], dtype=float)
    energies = np.array([a.get_potential_energy() for a in train_set])
    expected = np.linalg.lstsq(counts, energies, rcond=None)[0]
    got = trainer.model.head.element_energies.double()[[1, 6, 8]].numpy()
    assert np.allclose(got, expected, rtol=1e-6)
    assert not np.allclose(got, weights(parent)["head.element_energies"].double()[[1, 6, 8]].numpy())
    # the per-atom scale stays the parent's: its weights were learned with it
    assert torch.equal(trainer.model.head.scale, weights(parent)["head.scale"])


def test_keep_references_are_the_parents(data, parent, tmp_path):
    trainer = Trainer(tune(data["same"], parent, tmp_path / "ft", "data.element_energies=keep"), verbose=False)
    assert torch.equal(trainer.model.head.element_energies, weights(parent)["head.element_energies"])
    with pytest.raises(ValueError, match="keep: .* has no reference energy for O .*use refit"):
        Trainer(tune(data["new"], parent, tmp_path / "new", "data.element_energies=keep"), verbose=False)
    assert not (tmp_path / "new").exists()


def test_frozen_parameters_stay_and_the_others_train(data, parent, tmp_path):
    config = tune(data["new"], parent, tmp_path / "ft", "freeze=[embedding, layers.0.edge_*]")
    trainer = Trainer(config, verbose=False)
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert frozen == {"embedding.weight", "layers.0.edge_in.weight", "layers.0.edge_in.bias",
                      "layers.0.edge_out.weight", "layers.0.edge_out.bias"}
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for n, p in trainer.model.named_parameters() if n in frozen)
    trainer.fit()
    before, after = weights(parent), weights(tmp_path / "ft" / "last.pt")
    assert all(torch.equal(after[n], before[n]) for n in frozen)
    trained = [n for n, _ in trainer.model.named_parameters() if n not in frozen]
    assert all(not torch.equal(after[n], before[n]) for n in trained)
    assert "5/15 parameter tensors frozen" in (tmp_path / "ft" / "train.log").read_text()


def test_reset_heads_reinitialises_readout_and_energy_head(data, parent, tmp_path):
    trainer = Trainer(tune(data["new"], parent, tmp_path / "ft", "reset_heads=true"), verbose=False)
    theirs = weights(parent)
    ours = trainer.model.state_dict()
    for name in ours:
        head = name.startswith(tuple(trainer.model.heads))
        if name.startswith("readout."):
            assert not torch.equal(ours[name], theirs[name]), name
        elif not head:
            assert torch.equal(ours[name], theirs[name]), name
    assert float(trainer.model.head.scale) == pytest.approx(trainer.statistics["energy_scale"])
    assert float(trainer.model.head.scale) != pytest.approx(float(theirs["head.scale"]))


def test_the_parent_is_recorded_in_checkpoints_log_and_info(data, parent, tmp_path):
    train(tune(data["new"], parent, tmp_path / "ft"), verbose=False)
    digest = hashlib.sha256(parent.read_bytes()).hexdigest()
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(tmp_path / "ft" / name)["parent"] == {"path": str(parent.resolve()), "sha256": digest}
    assert f"parent   {parent} (egnn, sha256 {digest[:12]})" in (tmp_path / "ft" / "train.log").read_text()
    assert f"fine-tuned from {parent.resolve()} (sha256 {digest})" in describe(str(tmp_path / "ft" / "best.pt"))


def test_an_interrupted_fine_tune_resumes_as_if_uninterrupted(data, parent, tmp_path, monkeypatch):
    settings = ("epochs=3", "freeze=[embedding]")
    train(tune(data["new"], parent, tmp_path / "straight", *settings), verbose=False)
    original = Trainer._run_epoch

    def crash_in_epoch_2(self, epoch, signals):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, signals)

    monkeypatch.setattr(Trainer, "_run_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(tune(data["new"], parent, tmp_path / "crashed", *settings), verbose=False)
    monkeypatch.setattr(Trainer, "_run_epoch", original)

    def no_reinitialisation(*args):
        raise AssertionError("a resumed fine-tune must not start from the parent again")

    monkeypatch.setattr(finetune, "start_from_parent", no_reinitialisation)
    resumed = Trainer(tune(data["new"], parent, tmp_path / "crashed", *settings), resume="auto", verbose=False)
    assert resumed.start_epoch == 2
    resumed.fit()
    a, b = weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "crashed" / "last.pt")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_resume_from_a_checkpoint_file_into_a_new_folder(data, parent, tmp_path):
    """``--resume CHECKPOINT`` with another output dir (what ``sciml train --help`` says works)."""
    run = parent.parent
    config = load_config(run / "config.yaml", [f"output_dir={tmp_path / 'more'}", "epochs=3"])
    trainer = Trainer(config, resume=str(run / "last.pt"), verbose=False)
    assert trainer.start_epoch == 3
    assert (tmp_path / "more" / "splits.json").read_text() == (run / "splits.json").read_text()
    assert trainer.fit().last_epoch == 3


def test_the_cli_takes_init_from(data, parent, tmp_path, capsys):
    config = tmp_path / "finetune.yaml"
    config.write_text(f"data: {{path: {data['new']}}}\nsplit: {{valid: 5, test: 5}}\nepochs: 1\n")
    assert main(["train", str(config), "--output-dir", str(tmp_path / "ft"), "--init-from", str(parent)]) == 0
    assert load_config(tmp_path / "ft" / "config.yaml").init_from == str(parent)


@pytest.fixture(scope="module")
def other_parents(tmp_path_factory) -> dict:
    """Untrained checkpoints: a direct-force EquiformerV2 (no stress output) and an EGNN whose
    element embedding stops before O (num_elements=8)."""
    folder = tmp_path_factory.mktemp("other-parents")
    small = model_entry("equiformer_v2").small.to_dict()
    models = {"equiformer": build_model("equiformer_v2", **small),
              "short": build_model("egnn", hidden=8, layers=1, num_elements=8)}
    for name, model in models.items():
        save_checkpoint(folder / f"{name}.pt", model.state_dict(), model.model_name, model.options.to_dict())
    frames = ase.io.read(ETHANOL, index=":20")
    for atoms in frames:
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": np.zeros(6)}
        atoms.cell, atoms.pbc = np.eye(3) * 12.0, True
        atoms.calc = SinglePointCalculator(atoms, **results)
    ase.io.write(folder / "stress.extxyz", frames)
    return {"folder": folder, "stress": folder / "stress.extxyz"}


@pytest.mark.parametrize("case, message", [
    ("not a checkpoint", "not a sciml or fairchem checkpoint|is not a"),
    ("another model", "holds a 'egnn' model, but model.name is 'equiformer_v2'"),
    ("shape change", r"model.options hidden=16 \(checkpoint: 8\) change the shapes"),
    ("pattern matching nothing", "freeze: 'blocks.0.\\*' matches no parameter of egnn"),
    ("property the model lacks", "loss.properties has 'gap', but the model predicts no 'gap'"),
    ("stress without stress output", "stress labels and loss.stress is 1, but this equiformer_v2 model predicts no stress"),
    ("element beyond the embedding", r"element O \(Z=8\) .* beyond the model's element embedding"),
    ("preset", "model.preset does not apply with init_from"),
])
def test_bad_input_is_refused_in_one_line_before_anything_is_written(data, parent, other_parents, tmp_path, case,
                                                                     message):
    out = tmp_path / "ft"
    config = {
        "not a checkpoint": lambda: tune(data["new"], data["new"], out),
        "another model": lambda: tune(data["new"], parent, out, "model.name=equiformer_v2"),
        "shape change": lambda: tune(data["new"], parent, out, "model.options={hidden: 16}"),
        "pattern matching nothing": lambda: tune(data["new"], parent, out, "freeze=[blocks.0.*]"),
        "property the model lacks": lambda: tune(data["gap"], parent, out, "data.property_keys=[gap]",
                                                 "loss.properties={gap: 1.0}"),
        "stress without stress output": lambda: tune(other_parents["stress"], other_parents["folder"] / "equiformer.pt",
                                                     out),
        "element beyond the embedding": lambda: tune(data["new"], other_parents["folder"] / "short.pt", out),
        "preset": lambda: tune(data["new"], parent, out, "model.preset=qm9"),
    }[case]
    with pytest.raises(ValueError, match=message) as error:
        Trainer(config(), verbose=False)
    assert "\n" not in str(error.value)
    assert not out.exists()


def test_keys_that_need_init_from_are_refused_without_it(data, tmp_path):
    for override, message in (("reset_heads=true", "reset_heads needs init_from"),
                              ("data.element_energies=keep", "keep needs init_from")):
        with pytest.raises(ValueError, match=message):
            load_config(None, [f"data.path={data['new']}", override])


@pytest.mark.slow
def test_a_fairchem_checkpoint_is_a_parent(tmp_path):
    """The fairchem EquiformerV2 fixture (random weights) starts a fine-tune on EMT labels."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "equiformer_v2_fairchem"
    frames = ase.io.read(fixtures / "structures.extxyz", index=":")
    for atoms in frames:
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    ase.io.write(tmp_path / "emt.extxyz", frames)
    trainer = Trainer(load_config(None, [f"data.path={tmp_path / 'emt.extxyz'}", f"output_dir={tmp_path / 'ft'}",
                                         f"init_from={fixtures / 'small_random.pt'}", "split.valid=1", "split.test=0",
                                         "model.options={alpha_drop: 0.1}", "freeze=[blocks.0]"]), verbose=False)
    parent = load_model(fixtures / "small_random.pt").state_dict()
    assert trainer.config.model.name == "equiformer_v2" and trainer.model.options.alpha_drop == 0.1
    assert all(torch.equal(value, parent[name]) for name, value in trainer.model.state_dict().items()
               if not name.startswith("head."))
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if n.startswith("blocks.0."))

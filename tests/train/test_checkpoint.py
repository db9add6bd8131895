import pickle

import pytest
import torch

from sciml.io import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_with_metadata(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(
        tmp_path / "model.pt", model.state_dict(), "egnn", options={"layers": 4, "cutoff": 5.0, "names": ["a"]},
        statistics={"energy_mean": 1.5, "element_energies": torch.arange(3.0)}, epoch=7,
    )
    loaded = load_checkpoint(path)
    assert loaded["model_name"] == "egnn" and loaded["options"]["layers"] == 4 and loaded["epoch"] == 7
    assert torch.equal(loaded["state_dict"]["weight"], model.weight.detach())
    assert torch.equal(loaded["statistics"]["element_energies"], torch.arange(3.0))
    assert isinstance(loaded["sciml_version"], str)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


@pytest.mark.parametrize("cut", [0, 10, 0.5])
def test_truncated_file_gives_clear_error(tmp_path, cut):
    path = save_checkpoint(tmp_path / "model.pt", {"w": torch.ones(100)}, "egnn")
    data = path.read_bytes()
    path.write_bytes(data[: int(cut if cut >= 1 else len(data) * cut)])
    with pytest.raises(CheckpointError, match="empty|truncated or corrupted"):
        load_checkpoint(path)


def test_foreign_and_malicious_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a sciml checkpoint"):
        load_checkpoint(foreign)

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        torch.save({"format": "sciml-checkpoint", "x": Exploit()}, handle, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="global print .*without running code") as refused:
        load_checkpoint(evil)
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_keeps_the_existing_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "model.pt", {"w": torch.ones(2)}, "egnn")
    before = path.read_bytes()
    with pytest.raises(TypeError, match="only plain values"):
        save_checkpoint(path, {"w": torch.ones(2)}, "egnn", config={"bad": object()})

    def exploding_save(obj, target):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(2)}, "egnn")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "sciml-checkpoint", "format_version": 99}, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_format_1_checkpoints_load_with_their_config_as_the_options(tmp_path):
    """Checkpoints written before the model contract stored the options as ``config``."""
    from ase.build import molecule

    from sciml.graph import AtomicGraph
    from sciml.inference import load_model
    from sciml.models import build_model

    torch.manual_seed(0)
    model = build_model("egnn", hidden=8, layers=2).eval()
    path = tmp_path / "v1.pt"
    torch.save({"format": "sciml-checkpoint", "format_version": 1, "sciml_version": "0.1.0", "model_name": "egnn",
                "config": model.options.to_dict(), "statistics": {}, "state_dict": model.state_dict()}, path)
    assert "config" not in load_checkpoint(path) and load_checkpoint(path)["options"]["hidden"] == 8
    loaded = load_model(path)
    assert loaded.options == model.options
    graph = AtomicGraph.from_ase(molecule("CH4"), model.graph_spec)
    assert torch.equal(loaded(graph)["energy"], model(graph)["energy"])

"""Neural operators through the shared trainer: Navier-Stokes trajectories from the solver, an
FNO .mat file, relative L2 training with rollouts, rotated-test-set and super-resolution metrics."""

from __future__ import annotations

import json

import pytest
import torch

from sciml.data.pde import generate_navier_stokes, write_fno_mat
from sciml.train import load_config, train

pytestmark = pytest.mark.slow  # every test uses the generated Navier-Stokes files and trains FNOs


def _write(path, num, resolution, seed):
    data = generate_navier_stokes(num, resolution=resolution, solver_resolution=32, viscosity=1e-3,
                                  forcing="symmetric", t_final=3.0, record_every=0.25, dt=2.5e-3, scheme="heun",
                                  seed=seed, dtype=torch.float32)
    write_fno_mat(path, data["vorticity"].numpy(), data["initial"].numpy(), data["t"].numpy())
    return path


@pytest.fixture(scope="module")
def ns_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ns")
    return _write(folder / "ns16.mat", 24, 16, 0), _write(folder / "ns32.mat", 4, 32, 1)


def _config(path, output, model, options, *extra):
    return load_config(None, [
        f"data.path={path}", "data.format=fno_mat", f"model.name={model}", f"model.options={options}",
        "fields.t_in=4", "fields.steps=4", "split.valid=4", "split.test=4", "batch_size=4", "epochs=6",
        "optimizer.lr=5e-3", "scheduler.name=cosine", f"output_dir={output}", *extra])


def test_fno_training_lowers_the_relative_error_and_reports_symmetry_metrics(ns_files, tmp_path):
    small, large = ns_files
    config = _config(small, tmp_path / "fno", "fno2d", "{t_in: 4, width: 8, modes: 4, blocks: 2}",
                     "fields.transforms=[identity, rot90, reflect]", f"fields.extra_test={{x32: {large}}}", "epochs=60")
    result = train(config, verbose=False)
    rows = (tmp_path / "fno" / "metrics.csv").read_text().splitlines()
    first_valid = float(rows[1].split(",")[2])
    assert result.best_valid_loss < 0.7 * first_valid
    metrics = json.loads((tmp_path / "fno" / "test_metrics.json").read_text())
    model, baselines = metrics["model"], metrics["baselines"]
    assert {"rel_l2", "rel_l2_rot90", "rel_l2_reflect", "rel_l2_x32", "num_samples"} <= set(model)
    assert model["rel_l2"] < baselines["persistence_rel_l2"]


def test_teacher_forcing_and_space_time_models(ns_files, tmp_path):
    small, _ = ns_files
    forced = train(_config(small, tmp_path / "forced", "gfno2d_p4", "{t_in: 4, width: 4, modes: 4, blocks: 2, grid: none}",
                           "fields.teacher_forcing=true", "epochs=2"), verbose=False)
    assert forced.test_metrics["rel_l2"] > 0
    # G-FNO without a grid feature is equivariant to the origin rotation the data obey
    assert forced.test_metrics["rel_l2_rot90"] == pytest.approx(forced.test_metrics["rel_l2"], rel=1e-4)
    one_shot = train(_config(small, tmp_path / "fno3d", "fno3d",
                             "{channels_in: 4, width: 6, modes: 4, time_modes: 2, blocks: 2}", "epochs=2"), verbose=False)
    assert one_shot.test_metrics["rel_l2"] > 0


def test_field_config_errors(ns_files, tmp_path):
    small, _ = ns_files
    with pytest.raises(ValueError, match="fewer than fields.t_in"):
        train(_config(small, tmp_path / "long", "fno2d", "{t_in: 4, width: 4, modes: 4, blocks: 1}", "fields.steps=40"))
    with pytest.raises(ValueError, match="unknown transforms"):
        train(_config(small, tmp_path / "shear", "fno2d", "{t_in: 4, width: 4, modes: 4, blocks: 1}",
                      "fields.transforms=[shear]"))


def test_eval_cli_reads_field_checkpoints(ns_files, tmp_path, capsys):
    from sciml.cli.main import main

    small, large = ns_files
    train(_config(small, tmp_path / "run", "gfno2d_p4m", "{t_in: 4, width: 3, modes: 4, blocks: 1, grid: none}",
                  "epochs=1"), verbose=False)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), str(large)]) == 0
    out = capsys.readouterr().out
    assert "rel_l2_rot90" in out and "4 trajectories" in out

"""PDE task utilities: relative L2 error, autoregressive rollout with teacher forcing and the
evaluation on transformed (rotated, reflected) test sets."""

import pytest
import torch

from sciml.tasks.pde import evaluate_rollout, relative_l2, rollout


def test_relative_l2_is_fnos_lp_loss():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(3, 8, 8, 2, generator=generator, dtype=torch.float64)
    prediction = target + 0.1 * torch.randn(3, 8, 8, 2, generator=generator, dtype=torch.float64)
    per_sample = torch.stack([(p - t).norm() / t.norm() for p, t in zip(prediction, target)])
    torch.testing.assert_close(relative_l2(prediction, target, "none"), per_sample)
    torch.testing.assert_close(relative_l2(prediction, target), per_sample.mean())
    with pytest.raises(ValueError, match="differ in shape"):
        relative_l2(prediction, target[..., :1])


def _persistence(window):
    """Predicts that the last step repeats (equivariant to every spatial transform)."""
    return window[..., -1:]


def test_rollout_and_teacher_forcing():
    fields = torch.randn(2, 6, 6, 8, generator=torch.Generator().manual_seed(1))
    predicted = rollout(_persistence, fields[..., :3], steps=5)
    assert torch.equal(predicted, fields[..., 2:3].expand(-1, -1, -1, 5))
    forced = rollout(_persistence, fields[..., :3], steps=5, truth=fields[..., 3:])
    torch.testing.assert_close(forced, fields[..., 2:7])  # each step sees the true previous one

    def two_steps(window):
        return torch.cat([window[..., -1:], window[..., -1:]], dim=-1)

    assert rollout(two_steps, fields[..., :3], steps=5).shape == (2, 6, 6, 5)
    with pytest.raises(ValueError, match="shape"):
        rollout(_persistence, fields[0], steps=2)


def test_evaluate_rollout_under_transforms():
    fields = torch.randn(4, 8, 8, 6, generator=torch.Generator().manual_seed(2))
    metrics = evaluate_rollout(_persistence, fields, t_in=2, steps=4, transforms=("identity", "rot90", "reflect"))
    assert metrics["rel_l2_identity"] > 0
    assert metrics["rel_l2_rot90"] == pytest.approx(metrics["rel_l2_identity"], rel=1e-6)
    assert metrics["rel_l2_reflect"] == pytest.approx(metrics["rel_l2_identity"], rel=1e-6)

    def not_equivariant(window):
        return window[..., -1:] + torch.linspace(0, 1, window.shape[1])[None, :, None, None]

    shifted = evaluate_rollout(not_equivariant, fields, t_in=2, steps=4, transforms=("identity", "rot90"))
    assert abs(shifted["rel_l2_rot90"] - shifted["rel_l2_identity"]) > 1e-3
    with pytest.raises(ValueError, match="unknown transforms"):
        evaluate_rollout(_persistence, fields, 2, 4, transforms=("shear",))


def test_prediction_png(tmp_path):
    from sciml.tasks.pde import plot_prediction

    truth = torch.randn(16, 16, 3, generator=torch.Generator().manual_seed(3))
    plot_prediction(truth, truth + 0.1, str(tmp_path / "vorticity.png"), title="step 3")
    assert (tmp_path / "vorticity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

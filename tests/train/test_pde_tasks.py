"""PDE task utilities: relative L2 error, autoregressive rollout with teacher forcing and the
errors on transformed (rotated, reflected) test sets."""

import pytest
import torch

from sciml.tasks.pde import relative_l2, rollout, transformed_errors


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


def test_errors_under_transforms():
    fields = torch.randn(4, 8, 8, 6, generator=torch.Generator().manual_seed(2))

    def persistence_rollout(chunk):
        return rollout(_persistence, chunk[..., :2], 4)

    metrics = transformed_errors(persistence_rollout, fields, t_in=2, transforms=("identity", "rot90", "reflect"))
    assert metrics["identity"] > 0
    assert metrics["rot90"] == pytest.approx(metrics["identity"], rel=1e-6)
    assert metrics["reflect"] == pytest.approx(metrics["identity"], rel=1e-6)
    assert metrics["identity"] == pytest.approx(float(relative_l2(persistence_rollout(fields), fields[..., 2:])), rel=1e-6)

    def not_equivariant(window):
        return window[..., -1:] + torch.linspace(0, 1, window.shape[1])[None, :, None, None]

    shifted = transformed_errors(lambda chunk: rollout(not_equivariant, chunk[..., :2], 4), fields, 2, ("identity", "rot90"))
    assert abs(shifted["rot90"] - shifted["identity"]) > 1e-3
    with pytest.raises(ValueError, match="unknown transforms"):
        transformed_errors(persistence_rollout, fields, 2, transforms=("shear",))


def test_prediction_png(tmp_path):
    from sciml.tasks.pde import plot_prediction

    truth = torch.randn(16, 16, 3, generator=torch.Generator().manual_seed(3))
    plot_prediction(truth, truth + 0.1, str(tmp_path / "vorticity.png"), title="step 3")
    assert (tmp_path / "vorticity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

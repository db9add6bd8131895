"""Neural-operator tasks on time-dependent 2D fields: relative L2 error, autoregressive rollout
(with teacher forcing), one-shot space-time prediction, and evaluation on rotated, reflected and
higher-resolution test sets.

Fields are (B, X, Y, T) tensors (2D time stepping: the model maps the last ``t_in`` steps,
(B, X, Y, t_in), to the next ``t_out`` steps) or (B, X, Y, T, C) (3D models, one shot).
Rotations and reflections act on the two spatial axes about the grid origin, as the periodic
domain's symmetries (:mod:`sciml.data.pde.symmetry`: ``w[i, j] -> w[j, -i mod n]``; ``torch.rot90``
alone rotates about the cell centre, a different map on a periodic grid). Vorticity is a
pseudo-scalar: the mirror image of a flow is ``-reflect(w)``, and it solves the same equation only
when the forcing is odd under the mirror too (the symmetric forcing is not).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch

from sciml.data.pde.symmetry import reflect_periodic, rotate90_periodic


def relative_l2(prediction: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """FNO's relative L2 error ||prediction - target|| / ||target|| per sample (over all non-batch
    axes), averaged over the batch (``reduction="mean"``), summed (``"sum"``) or per sample (``"none"``)."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    difference = (prediction - target).flatten(1).norm(dim=1)
    scale = target.flatten(1).norm(dim=1).clamp(min=torch.finfo(target.dtype).tiny)
    error = difference / scale
    if reduction == "mean":
        return error.mean()
    if reduction == "sum":
        return error.sum()
    if reduction == "none":
        return error
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def rollout(
    model: Callable[[torch.Tensor], torch.Tensor],
    initial: torch.Tensor,
    steps: int,
    truth: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Autoregressive prediction of ``steps`` time steps.

    Args:
        model: maps (B, X, Y, t_in) to (B, X, Y, t_out) (the next t_out steps).
        initial: (B, X, Y, t_in), the known steps.
        steps: how many steps to predict (a multiple of t_out is not required: the last call's
            extra steps are dropped).
        truth: (B, X, Y, >= steps) for teacher forcing: each call then sees the true previous
            steps instead of its own predictions (training with teacher forcing, or measuring
            one-step errors).

    Returns:
        (B, X, Y, steps).
    """
    if initial.ndim != 4:
        raise ValueError(f"initial steps must have shape (B, X, Y, t_in), got {tuple(initial.shape)}")
    if truth is not None and (truth.shape[:3] != initial.shape[:3] or truth.shape[3] < steps):
        raise ValueError(f"teacher-forcing truth {tuple(truth.shape)} must cover {steps} steps of {tuple(initial.shape[:3])}")
    window, predicted, done = initial, [], 0
    while done < steps:
        out = model(window)
        predicted.append(out)
        done += out.shape[-1]
        known = truth[..., done - out.shape[-1]:done] if truth is not None else out
        window = torch.cat([window, known], dim=-1)[..., -initial.shape[-1]:]
    return torch.cat(predicted, dim=-1)[..., :steps]


TRANSFORMS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda field: field,
    "rot90": rotate90_periodic,
    "rot180": lambda field: rotate90_periodic(field, 2),
    "rot270": lambda field: rotate90_periodic(field, 3),
    "reflect": reflect_periodic,
}


def check_transforms(names: Sequence[str], what: str = "transforms") -> None:
    """ValueError naming the entries of ``names`` that are not in :data:`TRANSFORMS`."""
    unknown = [name for name in names if name not in TRANSFORMS]
    if unknown:
        raise ValueError(f"{what} has unknown transforms {unknown}; choose from {sorted(TRANSFORMS)}")


def transformed_errors(
    predict: Callable[[torch.Tensor], torch.Tensor],
    fields: torch.Tensor,
    t_in: int,
    transforms: Sequence[str] = ("identity",),
    batch_size: int = 20,
    device: "str | torch.device | None" = None,
) -> Dict[str, float]:
    """Mean relative L2 error of ``predict`` on trajectories, as given and transformed.

    ``predict`` maps a chunk of trajectories (B, X, Y, T) to its predicted steps (B, X, Y, T - t_in)
    (a rollout from the first ``t_in`` steps, or a one-shot space-time model), which are compared
    with the chunk's own last steps; ``fields`` is (N, X, Y, T) and each of ``transforms``
    (``rot90``, ``reflect``, ...) is applied to it first: a model equivariant to the transform
    scores the same. Runs without gradients, ``batch_size`` trajectories at a time on ``device``.

    Returns ``{transform: error}``.
    """
    check_transforms(transforms)
    errors = {}
    with torch.no_grad():
        for name in transforms:
            total = 0.0
            for chunk in TRANSFORMS[name](fields).split(batch_size):
                chunk = chunk.to(device)
                total += float(relative_l2(predict(chunk), chunk[..., t_in:], "sum"))
            errors[name] = total / fields.shape[0]
    return errors


def plot_prediction(truth: torch.Tensor, prediction: torch.Tensor, output: str, title: str = "") -> None:
    """A PNG of true and predicted vorticity and their difference for one sample (X, Y) or the
    last step of (X, Y, T)."""
    from sciml.io.files import atomic_path
    from sciml.plots import _pyplot

    if truth.ndim == 3:
        truth, prediction = truth[..., -1], prediction[..., -1]
    truth, prediction = truth.detach().cpu().numpy(), prediction.detach().cpu().numpy()
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    limit = float(abs(truth).max())
    for ax, (name, image, scale) in zip(axes, (("true", truth, limit), ("predicted", prediction, limit),
                                              ("error", prediction - truth, float(abs(prediction - truth).max())))):
        shown = ax.imshow(image.T, origin="lower", cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

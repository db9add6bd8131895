"""The checkpoints of a run folder and the choice of the one to resume from.

A run keeps ``last.pt`` (end of the last epoch), ``best.pt`` (lowest validation loss) and, with
``checkpoint_every``, step checkpoints ``checkpoints/step-<global step>.pt`` written mid-epoch
(the newest ``keep_checkpoints`` are kept). Every checkpoint that can be resumed from records
``global_step``, the number of optimizer steps behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from sciml.io.checkpoint import CheckpointError, load_checkpoint

STEP_FOLDER = "checkpoints"


def step_checkpoint_path(run_dir: Path, global_step: int) -> Path:
    """``run_dir/checkpoints/step-000000123.pt``."""
    return Path(run_dir) / STEP_FOLDER / f"step-{global_step:09d}.pt"


def step_checkpoints(run_dir: Path) -> List[Path]:
    """The step checkpoints of a run, oldest first."""
    return sorted((Path(run_dir) / STEP_FOLDER).glob("step-*.pt"))


def prune_step_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints."""
    for path in step_checkpoints(run_dir)[:-keep] if keep > 0 else step_checkpoints(run_dir):
        path.unlink(missing_ok=True)


def newest_checkpoint(run_dir: Path, on_skip: Callable[[str], None] = lambda reason: None
                      ) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The valid checkpoint with the most optimizer steps among ``last.pt`` and the step
    checkpoints, and its contents; None when the run has none of them.

    A truncated or corrupted candidate is skipped and ``on_skip`` gets the reason naming it; with
    candidates but none valid a :class:`~sciml.io.checkpoint.CheckpointError` lists them all.
    """
    run_dir = Path(run_dir)
    candidates = [p for p in [run_dir / "last.pt", *step_checkpoints(run_dir)] if p.exists()]
    best: Optional[Tuple[int, Path, Dict[str, Any]]] = None
    problems = []
    for path in candidates:
        try:
            payload = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            on_skip(f"skipping {err}")
            continue
        step = int(payload.get("global_step", -1))
        if best is None or step > best[0]:
            best = (step, path, payload)
    if best is None:
        if problems:
            raise CheckpointError(f"no valid checkpoint to resume from in {run_dir}: " + "; ".join(problems))
        return None
    return best[1], best[2]

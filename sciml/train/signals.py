"""Stop requests from the scheduler: SIGTERM (pre-emption, ``scancel``, torchrun shutting down)
and SIGUSR1 (Slurm's ``--signal=USR1@seconds`` warning before the time limit).

The handlers only record the signal; the trainer checks :attr:`StopSignals.received` after each
optimizer step, saves a checkpoint there and stops with :class:`TrainingInterrupted`, so a
checkpoint is never written from inside a signal handler.
"""

from __future__ import annotations

import signal
import threading
from typing import Dict, Optional

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingInterrupted(Exception):
    """Training stopped at a signal after saving ``checkpoint``; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int, checkpoint: str):
        self.signum, self.checkpoint = signum, checkpoint
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after saving {checkpoint}; "
                         f"continue with --resume auto")


class StopSignals:
    """Context manager recording SIGTERM/SIGUSR1 while it is active (in the main thread only;
    elsewhere it records nothing). The previous handlers are restored on exit."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def _record(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

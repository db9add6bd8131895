"""The one timing rule every benchmark uses: the fastest of several runs after warm-up."""

from __future__ import annotations

import time
from typing import Callable, List, Optional


def best_seconds(
    fn: Callable[[], object],
    repeats: int = 3,
    min_seconds: float = 0.0,
    budget_seconds: Optional[float] = None,
    warmup: int = 1,
) -> float:
    """Fastest of ``repeats`` timed runs of ``fn`` (s), after ``warmup`` untimed runs.

    Runs continue until there are ``repeats`` of them and they took ``min_seconds`` in total,
    unless ``budget_seconds`` is spent first (slow cases then stop after one timed run).
    """
    for _ in range(warmup):
        fn()
    times: List[float] = []
    while len(times) < repeats or sum(times) < min_seconds:
        if times and budget_seconds is not None and sum(times) >= budget_seconds:
            break
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)

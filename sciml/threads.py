"""Threads that fit the CPUs other processes leave free, so that a shared node slows sciml down
in proportion to the CPU it loses instead of collapsing.

torch's intra-op pool (OpenMP), MKL, oneDNN and sciml's C kernels run each parallel region on
all of torch's threads, and a thread that finishes early spins at the region's end waiting for
the others. When another process holds one of the cores, the thread it displaced runs only
when the scheduler gives it a time slice, and its partner spins that whole time: each of the
hundreds of small parallel regions of a forward pass then costs milliseconds. Measured on this
project's 2-core machine with one other CPU-bound process: the EGNN n-body forward went from
7.8 ms to 398 ms (mean, 2 threads); the 10k-atom neighbour list from about 50 ms to 1.6 s.
With one thread it stays at 9.7 ms. Sleeping instead of spinning (``OMP_WAIT_POLICY=PASSIVE``)
avoids the collapse too but makes every region wake a sleeping CPU: 21.5 ms on the idle machine.

:class:`ThreadGovernor` therefore measures, from ``/proc/stat``, how many of the CPUs this
process may run on were busy with other work since its last look, and lowers torch's thread
count to the CPUs left free (never above the count it started with, never below one); when the
other work stops, the threads come back. The ``sciml`` commands turn it on
(:func:`enable_adaptive_threads`); the trainer, ``sciml predict``, the calculator (so ase's MD
and optimisers) call :func:`adapt_threads` as they go, which looks again at most every
``interval_s`` seconds. ``SCIML_ADAPTIVE_THREADS=0`` keeps the thread count fixed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional

import torch

DEFAULT_INTERVAL_S = 5.0
_STARTUP_SAMPLE_S = 0.1


@dataclass(frozen=True)
class CpuSample:
    """CPU time counters at one moment: ``busy_s`` of the CPUs this process may use (all
    processes), ``own_s`` of this process, at monotonic time ``wall_s``."""

    wall_s: float
    busy_s: float
    own_s: float


def allowed_cpus() -> List[int]:
    """The CPUs this process may run on (its affinity; Slurm and taskset restrict it)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def sample(cpus: Optional[List[int]] = None) -> Optional[CpuSample]:
    """Counters now, or None where ``/proc/stat`` cannot be read (not Linux)."""
    cpus = allowed_cpus() if cpus is None else cpus
    wanted = {f"cpu{n}" for n in cpus}
    try:
        with open("/proc/stat") as handle:
            lines = [line.split() for line in handle if line.startswith("cpu")]
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    busy = sum(sum(int(v) for k, v in enumerate(fields[1:9]) if k not in (3, 4)) for fields in lines if fields[0] in wanted)
    own = os.times()
    return CpuSample(time.monotonic(), busy / ticks, own.user + own.system)


def free_cpus(before: CpuSample, after: CpuSample, cpus: int) -> float:
    """CPUs of ``cpus`` that other processes left free between two samples (0 to ``cpus``)."""
    wall = after.wall_s - before.wall_s
    if wall <= 0:
        return float(cpus)
    others = max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s)) / wall
    return min(float(cpus), max(0.0, cpus - others))


class ThreadGovernor:
    """Keeps torch's intra-op threads at the CPUs other processes leave free (module docstring).

    Args:
        max_threads: the most threads to use (default: torch's count when the governor starts).
        interval_s: the least time between two looks at the CPUs.
    """

    def __init__(self, max_threads: Optional[int] = None, interval_s: float = DEFAULT_INTERVAL_S):
        self.max_threads = max_threads or torch.get_num_threads()
        self.interval_s = interval_s
        self.cpus = allowed_cpus()
        self._last = sample(self.cpus)

    def update(self, force: bool = False) -> int:
        """Look at the CPUs if ``interval_s`` has passed (or ``force``) and set torch's threads;
        returns the thread count in use."""
        if self._last is None:
            return torch.get_num_threads()
        now = time.monotonic()
        if not force and now - self._last.wall_s < self.interval_s:
            return torch.get_num_threads()
        current = sample(self.cpus)
        if current is None:
            return torch.get_num_threads()
        free = free_cpus(self._last, current, len(self.cpus))
        self._last = current
        threads = max(1, min(self.max_threads, int(free + 0.5)))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads


_governor: Optional[ThreadGovernor] = None


def enable_adaptive_threads(max_threads: Optional[int] = None, interval_s: float = DEFAULT_INTERVAL_S) -> int:
    """Start adapting torch's threads to the free CPUs (unless ``SCIML_ADAPTIVE_THREADS=0``):
    a first look of 0.1 s now, then at most every ``interval_s`` in :func:`adapt_threads`.
    Returns the thread count in use."""
    global _governor
    if os.environ.get("SCIML_ADAPTIVE_THREADS", "1") == "0":
        return torch.get_num_threads()
    _governor = ThreadGovernor(max_threads, interval_s)
    time.sleep(_STARTUP_SAMPLE_S)
    return _governor.update(force=True)


def disable_adaptive_threads() -> None:
    """Stop adapting (the thread count stays where it is)."""
    global _governor
    _governor = None


def adapt_threads() -> int:
    """Where work repeats (training batches, prediction batches, calculator calls): let the
    governor look again if it is on and its interval has passed. Returns torch's thread count."""
    return _governor.update() if _governor is not None else torch.get_num_threads()

"""The measuring rules every benchmark uses: the fastest of several runs after warm-up (alone, or
taking turns with the runs it is compared with), and the peak memory of one run in a forked child."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence

import torch


@contextmanager
def competing_processes(count: int) -> Iterator[None]:
    """Run the block while ``count`` CPU-bound processes (a busy loop each) compete for the CPUs,
    as other jobs do on a shared node; they are killed when the block ends."""
    import subprocess
    import sys

    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.2 if busy else 0.0)  # let them start spinning
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op torch threads; the previous count is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


def alternating_best_seconds(functions: Sequence[Callable[[], object]], repeats: int) -> List[float]:
    """The fastest of ``repeats`` timed runs of each function (s), after one untimed run each, the
    functions taking turns so that a change of machine load hits all of them alike."""
    for fn in functions:
        fn()
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, fn in enumerate(functions):
            start = time.perf_counter()
            fn()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key))


def peak_extra_mb(fn: Callable[[], object], timeout_s: float = 600.0) -> float:
    """Peak resident-memory growth (MB) while running ``fn`` once in a forked single-threaded child,
    measured from a baseline with the free heap returned to the system; NaN if it fails or hangs."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure, report, exit without running the parent's cleanup
        os.close(read_end)
        try:
            torch.set_num_threads(1)  # thread pools do not survive a fork
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current resident size
            resident = _status_kb("VmRSS")
            fn()
            os.write(write_end, f"{(_status_kb('VmHWM') - resident) * 1024 / 1e6:.3f}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], timeout_s)
    data = os.read(read_end, 64) if ready else b""
    os.close(read_end)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return float(data) if data else float("nan")

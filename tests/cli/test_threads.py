"""sciml's threads follow the CPUs other processes leave free (sciml.threads)."""

import os
import subprocess
import sys
import time

import pytest
import torch

from sciml import threads
from sciml.threads import CpuSample, ThreadGovernor, adapt_threads, free_cpus


def test_free_cpus_counts_only_other_processes():
    before = CpuSample(wall_s=10.0, busy_s=100.0, own_s=5.0)
    # 2 s of wall time: 3 CPU-seconds busy in all, 1 of them this process's -> others used 1 CPU
    assert free_cpus(before, CpuSample(12.0, 103.0, 6.0), cpus=2) == pytest.approx(1.0)
    assert free_cpus(before, CpuSample(12.0, 101.0, 6.0), cpus=2) == pytest.approx(2.0)  # only us
    assert free_cpus(before, CpuSample(12.0, 120.0, 5.0), cpus=4) == 0.0  # never below zero


@pytest.fixture
def two_cpus():
    """This process pinned to two CPUs (restored afterwards), torch at 2 threads."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    previous_threads = torch.get_num_threads()
    os.sched_setaffinity(0, cpus[:2])
    torch.set_num_threads(2)
    yield cpus[:2]
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(previous_threads)
    threads.disable_adaptive_threads()


@pytest.mark.slow
def test_governor_gives_a_cpu_to_a_competing_process_and_takes_it_back(two_cpus):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, two_cpus[:1]))
    try:
        governor = ThreadGovernor(max_threads=2, interval_s=0.3)
        time.sleep(0.6)
        assert governor.update(force=True) == 1 and torch.get_num_threads() == 1
    finally:
        busy.kill()
        busy.wait()
    time.sleep(0.6)
    assert governor.update(force=True) == 2 and torch.get_num_threads() == 2
    assert governor.update() == 2  # within the interval: no new look


def test_adaptive_threads_are_off_unless_enabled_and_can_be_refused(two_cpus, monkeypatch):
    threads.disable_adaptive_threads()
    torch.set_num_threads(2)
    assert adapt_threads() == 2
    monkeypatch.setenv("SCIML_ADAPTIVE_THREADS", "0")
    assert threads.enable_adaptive_threads() == 2 and threads._governor is None
    monkeypatch.delenv("SCIML_ADAPTIVE_THREADS")
    assert threads.enable_adaptive_threads(interval_s=0.2) in (1, 2) and threads._governor is not None

"""How sciml's CPU threads wait: OpenMP threads that sleep instead of spinning, so a shared node
slows sciml down in proportion to the CPU it loses instead of collapsing.

torch's intra-op pool, MKL, oneDNN and sciml's C kernels all run on one OpenMP runtime
(torch's libgomp). By default a libgomp thread that reaches the end of a parallel region spins
for a while before it sleeps. On a machine where another process holds a core, the thread
that spins takes CPU from the partner it waits for, and each of the thousands of small
parallel regions of a forward pass then lasts a scheduler time slice: measured here, the EGNN
n-body forward went from 9 ms to 130 ms (median; up to 924 ms in bad runs) with one other
busy process on the 2 cores. With ``OMP_WAIT_POLICY=PASSIVE`` a waiting thread yields its core
at once. libgomp reads the variable when it is loaded, that is when torch is first imported,
so :func:`configure_openmp` sets it (unless the user has) when ``sciml`` is imported before
torch, as the ``sciml`` command does. A program that imports torch first keeps the default;
set ``OMP_WAIT_POLICY=PASSIVE`` in its environment to get the same behaviour.
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def configure_openmp() -> bool:
    """Ask OpenMP threads to sleep while they wait (see the module docstring), unless the
    environment already chooses (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``).

    Returns:
        Whether the policy in effect is sciml's: True when it was set here before torch's
        OpenMP runtime was loaded, or when the environment already asked for it.
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return os.environ.get("OMP_WAIT_POLICY", "").upper() == WAIT_POLICY
    if "torch" in sys.modules:  # libgomp has read its environment already
        return False
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True

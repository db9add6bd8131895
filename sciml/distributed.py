"""torch.distributed for training and inference launched by ``torchrun`` (or Slurm's ``srun``).

:func:`setup` reads the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``; under ``srun`` without torchrun ``SLURM_PROCID``/``SLURM_NTASKS``
are not used, launch with torchrun) and joins the process group: NCCL on GPUs, gloo on CPUs.
Without a launcher (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) it returns a one-process context and
creates no group, so every helper below is a no-op and code paths stay the same.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List, Sequence

import torch
import torch.distributed as dist

from sciml.devices import resolve_device

#: seconds to wait for the rendezvous and for any collective (``SCIML_DIST_TIMEOUT`` overrides)
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(ValueError):
    """The distributed environment is inconsistent or the rendezvous cannot be reached."""


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        """True when a process group of more than one process is up."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The device of this rank: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` when GPUs exist, else
        the request (checked by :func:`~sciml.devices.resolve_device`: ValueError if it does not exist)."""
        device = resolve_device(requested)
        if device.type == "cuda" and requested in ("auto", "cuda"):
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return device

    # -- collectives (no-ops in a one-process job) --------------------------------------
    def all_reduce_sum(self, values: Sequence[float]) -> List[float]:
        """Element-wise sums of ``values`` over all ranks (float64 on the CPU/GPU of the backend)."""
        if not self.enabled:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def all_gather(self, value: Any) -> List[Any]:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: List[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


def _env_int(name: str) -> int:
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"environment variable {name}={text!r} is not an integer") from None


def setup(device: str = "auto", timeout_s: float | None = None) -> DistributedContext:
    """Join the job's process group as the launcher describes it; see the module docstring.

    ``device``: the training device request (``cpu`` forces gloo even where GPUs exist).

    Raises:
        DistributedError: ``RANK`` outside ``0..WORLD_SIZE-1``, missing ``MASTER_ADDR``/``MASTER_PORT``,
            or the rendezvous not reached within ``timeout_s`` (an unreachable endpoint or a world
            size larger than the number of processes started).
    """
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                                  dist.get_backend())
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") == 1:
        return DistributedContext()
    world_size, rank = _env_int("WORLD_SIZE"), _env_int("RANK") if "RANK" in os.environ else -1
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistributedError(f"RANK={os.environ.get('RANK')} does not fit WORLD_SIZE={world_size}; "
                               f"launch with torchrun, which sets both")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world_size} but {' and '.join(missing)} unset; launch with torchrun")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    timeout = float(os.environ.get("SCIML_DIST_TIMEOUT", timeout_s if timeout_s is not None else DEFAULT_TIMEOUT_S))
    endpoint = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size, store=_round_store(world_size, timeout),
                                timeout=datetime.timedelta(seconds=timeout))
    except (RuntimeError, ValueError, TimeoutError) as err:
        reason = " ".join(str(err).split())[:300]
        raise DistributedError(
            f"rank {rank} of {world_size} could not join the process group at {endpoint} within {timeout:g} s "
            f"(unreachable rendezvous, or fewer processes started than WORLD_SIZE): {reason}") from None
    return DistributedContext(rank, world_size, local_rank, backend)


def _round_store(world_size: int, timeout_s: float):
    """Under torchrun's agent store, a store of this restart round only (else None: ``env://``).

    torchrun keeps one store for all rounds, so after an elastic restart the previous round's
    process-group keys (e.g. gloo's peer addresses) are still there and a fast new rank may
    connect to a dead peer. Every worker counts itself in; the first ``world_size`` joins form
    round 0, the next round 1, and each round's keys live under their own prefix.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=datetime.timedelta(seconds=timeout_s))
    restart_round = (store.add("sciml/joins", 1) - 1) // world_size
    return dist.PrefixStore(f"sciml/round_{restart_round}/", store)


def is_main_process() -> bool:
    """False on ranks other than 0 of an initialised process group (for printing once)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def teardown() -> None:
    """Leave the process group (if one is up)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

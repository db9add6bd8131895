"""The one registry of kernel backends: what each kernel family offers, what works where, the choice.

Every kernel family of ``sciml.ops`` has backends, chosen by the caller (a ``backend=`` argument),
else by the family's environment variable, else "auto":

============== ===================================== ======================== ===================
family         backends                              variable                 "auto" picks
============== ===================================== ======================== ===================
tensor_product reference, torch, cpu, triton, cuda   ``SCIML_TP_BACKEND``     cpu on CPUs; cuda,
                                                                              then triton on GPUs
harmonics      torch, c (spherical harmonics and     ``SCIML_SH_BACKEND``     c on CPUs
               Wigner-D blocks)
rotation       torch, triton (eSCN edge-frame        (``backend=`` of         triton on GPUs
               rotations)                            SO2Convolution, models)
============== ===================================== ======================== ===================

"auto" falls back to the family's portable backend (reference, torch, torch), with one warning
when a compiled kernel that should work on the device cannot be built. A backend asked for by
name that cannot run raises :class:`BackendUnavailable` naming why. Modules resolve their backend
once, when built or moved to a device (``TensorProduct``, ``EdgeFrames``); models never import a
backend. The compiled kernels take float32/float64: other dtypes run on the portable backend, or,
under autocast, in float32 (the operators' autocast rule).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

KERNEL_DTYPES = (torch.float32, torch.float64)


class BackendUnavailable(ValueError, RuntimeError):
    """A backend asked for by name cannot run here (a ValueError and a RuntimeError)."""


@dataclass(frozen=True)
class Family:
    """One kernel family: its backends, the variable that chooses among them and the preferences."""

    label: str
    choices: Tuple[str, ...]
    variable: Optional[str]
    preferred: Dict[str, Tuple[str, ...]]  # device type -> candidates of "auto", best first
    portable: str

    @property
    def compiled(self) -> Tuple[str, ...]:
        return tuple(name for name in self.choices if name not in ("auto", "reference", "torch"))


FAMILIES: Dict[str, Family] = {
    "tensor_product": Family("tensor-product", ("auto", "reference", "torch", "cpu", "triton", "cuda"), "SCIML_TP_BACKEND",
                             {"cpu": ("cpu",), "cuda": ("cuda", "triton")}, "reference"),
    "harmonics": Family("spherical-harmonics", ("auto", "c", "torch"), "SCIML_SH_BACKEND", {"cpu": ("c",)}, "torch"),
    "rotation": Family("SO(2) rotation", ("auto", "torch", "triton"), None, {"cuda": ("triton",)}, "torch"),
}
_CHECKS: Dict[Tuple[str, str], Callable[[torch.device], str]] = {}
_IMPLEMENTATIONS: Dict[Tuple[str, str], Any] = {}
_REASONS: Dict[Tuple[str, str, str], str] = {}
_CHOICES: Dict[tuple, str] = {}
_warned: set = set()


def register(family: str, backend: str, why_not: Callable[[torch.device], str], implementation: Any = None) -> None:
    """Declare how to tell whether ``backend`` of ``family`` runs on a device: ``why_not(device)``
    returns "" when it does, else the reason (it may build the kernel on its first call).
    ``implementation`` is what callers of the family receive from :func:`implementation`."""
    _CHECKS[(family, backend)] = why_not
    if implementation is not None:
        _IMPLEMENTATIONS[(family, backend)] = implementation


def implementation(family: str, backend: str) -> Any:
    """What ``backend`` of ``family`` registered as its implementation (e.g. a module of kernels)."""
    if (family, backend) not in _IMPLEMENTATIONS:
        _load_checks()
    return _IMPLEMENTATIONS[(family, backend)]


def choices(family: str) -> Tuple[str, ...]:
    """The names ``family`` accepts, "auto" first."""
    return FAMILIES[family].choices


def requested(family: str, name: Optional[str] = None) -> str:
    """``name``, else the family's environment variable, else "auto"; checked against its choices."""
    spec = FAMILIES[family]
    if name is None:
        name = os.environ.get(spec.variable, "auto") if spec.variable else "auto"
    if name not in spec.choices:
        source = f" ({spec.variable})" if spec.variable and name == os.environ.get(spec.variable) else ""
        raise ValueError(f"unknown {spec.label} backend {name!r}{source}; choose one of {spec.choices}")
    return name


def why_not(family: str, backend: str, device: torch.device) -> str:
    """"" when ``backend`` runs on ``device``, else the reason (asked once per process and device)."""
    if backend in ("reference", "torch"):
        return ""
    key = (family, backend, str(device))
    if key not in _REASONS:
        check = _CHECKS.get((family, backend))
        if check is None:
            _load_checks()
            check = _CHECKS.get((family, backend))
        _REASONS[key] = check(torch.device(device)) if check else f"no {FAMILIES[family].label} backend {backend!r} is registered"
    return _REASONS[key]


def resolve(family: str, name: Optional[str], device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The backend of ``family`` to run on ``device`` for ``dtype``.

    Raises ValueError for an unknown name and :class:`BackendUnavailable` for a backend asked
    for by name that cannot run (wrong device, dtype, or no kernel).
    """
    device = torch.device(device)
    autocast = torch.is_autocast_enabled(device.type)
    key = (family, name if name is not None else os.environ.get(FAMILIES[family].variable or "", None), str(device), dtype, autocast)
    if key not in _CHOICES:
        _CHOICES[key] = _choose(family, name, device, dtype, autocast)
    return _CHOICES[key]


def _choose(family: str, name: Optional[str], device: torch.device, dtype: torch.dtype, autocast: bool) -> str:
    spec = FAMILIES[family]
    name = requested(family, name)
    kernel_dtype = dtype in KERNEL_DTYPES or autocast
    if name in spec.compiled:
        if not kernel_dtype:
            raise BackendUnavailable(f"{spec.label} backend {name!r} supports float32/float64, got {dtype}")
        reason = why_not(family, name, device)
        if reason:
            raise BackendUnavailable(f"{spec.label} backend {name!r} is not usable on {device}: {reason}")
        return name
    if name != "auto" or not kernel_dtype:
        return name if name != "auto" else spec.portable
    for candidate in spec.preferred.get(device.type, ()):
        reason = why_not(family, candidate, device)
        if not reason:
            return candidate
        if (family, candidate) not in _warned and candidate in ("cpu", "cuda", "c"):
            _warned.add((family, candidate))
            warnings.warn(f"{spec.label} backend {candidate!r} unavailable: {reason}; falling back")
    return spec.portable


def _load_checks() -> None:
    """Import the modules that register the compiled backends' checks."""
    from sciml.ops import sh_codegen, so2_triton  # noqa: F401
    from sciml.ops.tensor_product import cpu, cuda, triton_core  # noqa: F401

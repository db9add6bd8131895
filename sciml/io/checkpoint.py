"""Checkpoints: atomic writes, metadata, and safe loading with ``weights_only=True``.

A checkpoint is a dict of plain types and tensors only, so ``torch.load(..., weights_only=True)``
reads it without running any code from the file:

    {"format": "sciml-checkpoint", "format_version": 1, "sciml_version": str,
     "model_name": str, "options": dict, "statistics": dict, "state_dict": dict, **extra}

``options`` are the model's options (``model.options.to_dict()``, see :mod:`sciml.models.contract`);
format version 1 stored them as ``config`` and reads as version 2.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from sciml.errors import CheckpointError
from sciml.io.files import atomic_path
from sciml.io.sniff import describe_wrong_file, is_torch_file
from sciml.version import __version__

FORMAT = "sciml-checkpoint"
FORMAT_VERSION = 2
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """Only plain containers, scalars and tensors may be saved (weights_only loading needs it)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint key {where}[{k!r}] must be str or int")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for n, v in enumerate(value):
            _check_plain(v, f"{where}[{n}]")
    elif not isinstance(value, _PLAIN):
        raise TypeError(f"checkpoint entry {where} has type {type(value).__name__}; only plain values and tensors are allowed")


def atomic_torch_save(obj: Any, path: "str | os.PathLike") -> Path:
    """``torch.save`` atomically: a crash or a full disk mid-write leaves ``path`` untouched."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_checkpoint(
    path: "str | os.PathLike",
    state_dict: Dict[str, torch.Tensor],
    model_name: str,
    options: Optional[Dict[str, Any]] = None,
    statistics: Optional[Dict[str, Any]] = None,
    **extra: Any,
) -> Path:
    """Write a checkpoint atomically. ``extra`` holds e.g. optimizer state, epoch, metrics."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sciml_version": __version__,
        "model_name": model_name,
        "options": dict(options or {}),
        "statistics": dict(statistics or {}),
        "state_dict": dict(state_dict),
        **extra,
    }
    _check_plain(payload, "checkpoint")
    return atomic_torch_save(payload, path)


def read_torch_file(path: "str | os.PathLike", map_location: "str | torch.device" = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors: tensors and plain values
    only, so a file never executes code.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupted or holds other objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if not is_torch_file(path):
        raise CheckpointError(describe_wrong_file(path, "a sciml or fairchem checkpoint"))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f"a reference to the Python global {found.group(1)}" if found else "objects other than tensors and plain values"
        raise CheckpointError(
            f"checkpoint {path} holds {what} and was not loaded: sciml reads checkpoints without running code "
            f"from them (tensors, numbers, strings, lists and dicts only)"
        ) from None
    except Exception as err:  # torch raises many types for damaged files (RuntimeError, KeyError, EOFError...)
        reason = (str(err).splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({type(err).__name__}: {reason})") from None


def load_checkpoint(path: "str | os.PathLike", map_location: "str | torch.device" = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, never executing code from the file.

    Raises:
        CheckpointError: the file is missing, empty, truncated, corrupted, not a sciml checkpoint,
            or from a newer format version.
    """
    return check_sciml_payload(read_torch_file(path, map_location), path)


def is_sciml_payload(payload: Any) -> bool:
    """Whether a loaded file carries the sciml checkpoint header."""
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def check_sciml_payload(payload: Any, path: "str | os.PathLike") -> Dict[str, Any]:
    """``payload`` (read from ``path``) if it is a sciml checkpoint this version reads (a version 1
    payload gets its ``config`` as ``options``).

    Raises:
        CheckpointError: no sciml header, or a newer format version.
    """
    if not is_sciml_payload(payload):
        raise CheckpointError(f"{path} is not a sciml checkpoint (no '{FORMAT}' header)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this sciml reads versions <= {FORMAT_VERSION}"
        )
    if version == 1:
        payload = {**payload, "options": payload.get("config", {})}
        del payload["config"]
    return payload

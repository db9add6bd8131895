"""Optional packages of the data generators, asked for by name when they are missing."""

from __future__ import annotations

import importlib


def require(module: str, purpose: str, install: str) -> None:
    """Import ``module`` or raise a one-line ValueError saying what needs it and how to install it.

    Raises:
        ValueError: ``module`` is not installed.
    """
    try:
        importlib.import_module(module)
    except ImportError:
        raise ValueError(f"{purpose} needs the {module} package, which is not installed: {install}") from None

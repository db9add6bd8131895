"""The ``backend`` fixture of the harmonics and Wigner-D tests: each test runs once per path
(``SCIML_SH_BACKEND``): the torch recurrence and the compiled C kernels (skipped without a compiler)."""

from __future__ import annotations

import pytest

from sciml.ops.cbuild import compiler


def has_compiler() -> bool:
    try:
        compiler()
        return True
    except RuntimeError:
        return False


BACKENDS = ["torch", pytest.param("c", marks=pytest.mark.skipif(not has_compiler(), reason="no C compiler"))]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Runs the test once per implementation (``SCIML_SH_BACKEND``)."""
    monkeypatch.setenv("SCIML_SH_BACKEND", request.param)
    return request.param

"""Every registered model passes the conformance suite (sciml.testing.conformance), from what it
declares; a model that breaks its declared contract fails it (see test_model_contract.py)."""

import pytest

from sciml.models import MODELS
from sciml.testing import conformance


#: the package's models (test files register their own, e.g. test_model_contract.py, and check them there)
BUILT_IN = [name for name, entry in MODELS.items() if entry.cls.__module__.startswith("sciml.")]


def _slow(name: str, check: str) -> bool:
    """Building every preset (up to 153M parameters) and EquiformerV2's checks take seconds each."""
    return check == "presets" or name == "equiformer_v2"


@pytest.mark.parametrize("name, check", [
    pytest.param(name, check, marks=[pytest.mark.slow] if _slow(name, check) else [], id=f"{name}-{check}")
    for name in sorted(BUILT_IN) for check in conformance.CHECKS
])
def test_registered_model_conforms(name, check):
    getattr(conformance, f"check_{check}")(name)

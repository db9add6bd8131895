"""Every registered model passes the conformance suite (sciml.testing.conformance), from what it
declares; a model that breaks its declared contract fails it."""


import pytest

from sciml.models import MODELS
from sciml.testing import conformance

NAMES = sorted(MODELS)


@pytest.mark.parametrize("check", [pytest.param(c, marks=pytest.mark.slow) if c == "presets" else c
                                   for c in conformance.CHECKS])
@pytest.mark.parametrize("name", NAMES)
def test_registered_model_conforms(name, check):
    getattr(conformance, f"check_{check}")(name)

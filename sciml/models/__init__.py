"""sciml models, built by name with :func:`build_model`, and the heads they share."""

from sciml.models.egnn import EGNNDynamics, EGNNEnergyModel, EGNNLayer
from sciml.models.heads import EnergyHead, PropertyHead, fit_element_energies
from sciml.models.registry import MODELS, PRESETS, build_model

__all__ = [
    "build_model",
    "MODELS",
    "PRESETS",
    "EGNNLayer",
    "EGNNEnergyModel",
    "EGNNDynamics",
    "EnergyHead",
    "PropertyHead",
    "fit_element_energies",
]

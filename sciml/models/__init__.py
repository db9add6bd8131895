"""sciml models: each registers itself under its name (:func:`register_model`) and is built with
:func:`build_model`; the contract every model meets is :mod:`sciml.models.contract`."""

from sciml.models.comformer import ComFormerOptions, EComFormer, EComFormerOptions, IComFormer, IComFormerOptions
from sciml.models.contract import (
    ENERGY_OUTPUTS,
    MODELS,
    Model,
    ModelEntry,
    ModelOptions,
    Output,
    build_model,
    model_entry,
    register_model,
)
from sciml.models.egnn import EGNNDynamics, EGNNDynamicsOptions, EGNNEnergyModel, EGNNLayer, EGNNOptions
from sciml.models.equiformer_v2 import EquiformerV2, EquiformerV2Options
from sciml.models.gfno import (
    FNO2d,
    FNO2dOptions,
    FNO3d,
    FNO3dOptions,
    GFNO2d,
    GFNO2dOptions,
    GFNO3d,
    GFNO3dOptions,
)
from sciml.models.heads import EnergyHead, PropertyHead, fit_element_energies

__all__ = [
    "build_model",
    "register_model",
    "model_entry",
    "MODELS",
    "Model",
    "ModelEntry",
    "ModelOptions",
    "Output",
    "ENERGY_OUTPUTS",
    "EGNNLayer",
    "EGNNEnergyModel",
    "EGNNOptions",
    "EGNNDynamics",
    "EGNNDynamicsOptions",
    "EquiformerV2",
    "EquiformerV2Options",
    "IComFormer",
    "IComFormerOptions",
    "EComFormer",
    "EComFormerOptions",
    "ComFormerOptions",
    "FNO2d",
    "FNO2dOptions",
    "GFNO2d",
    "GFNO2dOptions",
    "FNO3d",
    "FNO3dOptions",
    "GFNO3d",
    "GFNO3dOptions",
    "EnergyHead",
    "PropertyHead",
    "fit_element_energies",
]

"""EquiformerV2 (Liao et al., ICLR 2024): the model, its named OC20 presets and the
converter of fairchem checkpoints."""

from sciml.models.equiformer_v2.fairchem import (
    convert_state_dict,
    export_fairchem_checkpoint,
    fairchem_model_options,
    load_fairchem_checkpoint,
)
from sciml.models.equiformer_v2.model import AVG_DEGREE, AVG_NUM_NODES, PRESETS, EquiformerV2, EquiformerV2Options

__all__ = [
    "EquiformerV2",
    "EquiformerV2Options",
    "PRESETS",
    "AVG_NUM_NODES",
    "AVG_DEGREE",
    "load_fairchem_checkpoint",
    "convert_state_dict",
    "export_fairchem_checkpoint",
    "fairchem_model_options",
]

"""EquiformerV2 (Liao et al., ICLR 2024): the model, its named OC20 and OMat24 presets, the
rank-2 stress head and the conversion of fairchem checkpoints (their files: :mod:`sciml.fairchem`)."""

from sciml.models.equiformer_v2.fairchem import (
    convert_state_dict,
    fairchem_checkpoint_dict,
    fairchem_checkpoint_model,
    fairchem_heads,
    fairchem_model_options,
)
from sciml.models.equiformer_v2.model import AVG_DEGREE, AVG_NUM_NODES, PRESETS, EquiformerV2, EquiformerV2Options
from sciml.models.equiformer_v2.stress import Rank2StressHead

__all__ = [
    "EquiformerV2",
    "EquiformerV2Options",
    "PRESETS",
    "AVG_NUM_NODES",
    "AVG_DEGREE",
    "convert_state_dict",
    "fairchem_checkpoint_dict",
    "fairchem_checkpoint_model",
    "fairchem_heads",
    "fairchem_model_options",
    "Rank2StressHead",
]

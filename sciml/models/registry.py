"""Model registry: build any sciml model from its name and plain-typed options.

Every model stores its options as ``model.config`` (plain types only), so
``build_model(model.model_name, **model.config)`` rebuilds it, e.g. from a checkpoint.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Callable, Dict

from torch import nn

from sciml.models import comformer, egnn, equiformer_v2, gfno

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "egnn": egnn.EGNNEnergyModel,
    "egnn_nbody": egnn.EGNNDynamics,
    "equiformer_v2": equiformer_v2.EquiformerV2,
    "icomformer": comformer.IComFormer,
    "ecomformer": comformer.EComFormer,
    "fno2d": gfno.FNO2d,
    "gfno2d_p4": partial(gfno.GFNO2d, group="p4"),
    "gfno2d_p4m": partial(gfno.GFNO2d, group="p4m"),
    "fno3d": gfno.FNO3d,
    "gfno3d_p4": partial(gfno.GFNO3d, group="p4"),
    "gfno3d_p4m": partial(gfno.GFNO3d, group="p4m"),
}

PRESETS: Dict[str, Dict[str, Dict[str, object]]] = {"egnn": egnn.PRESETS, "equiformer_v2": equiformer_v2.CONFIGS}


def build_model(name: str, **options) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`) from keyword options.

    ``preset="..."`` (or ``config="..."``, e.g. ``build_model("equiformer_v2", config="oc20_31M")``)
    starts from a named configuration of that model (see :data:`PRESETS`); explicit options
    override it. Unknown names, presets and options raise ValueError.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    preset = options.pop("preset", None)
    if preset is None and isinstance(options.get("config"), str):
        preset = options.pop("config")
    if preset is not None:
        presets = PRESETS.get(name, {})
        if preset not in presets:
            raise ValueError(
                f"unknown preset {preset!r} for model {name}; available: {', '.join(sorted(presets)) or 'none'}"
            )
        options = {**presets[preset], **options}
    builder = MODELS[name]
    valid = [p for p in inspect.signature(builder).parameters if p != "self"]
    for option in options:
        if option not in valid:
            raise ValueError(f"unknown option {option!r} for model {name}; valid: {', '.join(valid)}")
    return builder(**options)

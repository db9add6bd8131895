"""fairchem (v1, fairchem-core 1.x) EquiformerV2 checkpoint files: load them as sciml models and
write sciml EquiformerV2 weights in their format. Files are read with
``torch.load(weights_only=True)``: a checkpoint cannot run code. The conversion itself is
:mod:`sciml.models.equiformer_v2.fairchem`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from sciml.io.checkpoint import atomic_torch_save, read_torch_file
from sciml.models.equiformer_v2 import EquiformerV2
from sciml.models.equiformer_v2.fairchem import fairchem_checkpoint_dict, fairchem_checkpoint_model


def load_fairchem_checkpoint(path: "str | Path", use_ema: bool = True) -> Tuple[EquiformerV2, Dict[str, Any]]:
    """Build a sciml :class:`EquiformerV2` from a fairchem v1 checkpoint file.

    Args:
        path: a fairchem trainer checkpoint (e.g. ``eq2_31M_ec4_allmd.pt``).
        use_ema: use the EMA parameters when the checkpoint has them (as fairchem's predictions do).

    Returns:
        ``(model, info)``: the model in eval mode with the checkpoint's weights and output
        normalisation (energy = rmsd * output + mean, forces = force rmsd * output; from the
        checkpoint's ``normalizers``, else from its config's dataset section), and ``info``
        with the sciml options, fairchem's model config, the normalisers, whether EMA weights were
        used, the ignored constant buffers, epoch and step.

    Raises:
        CheckpointError: unreadable file, another model, unsupported options, or parameter names
            or shapes that do not match (all mismatches are listed).
    """
    return fairchem_checkpoint_model(read_torch_file(path), path, use_ema)


def export_fairchem_checkpoint(model: EquiformerV2, path: "str | Path") -> Path:
    """Write ``model``'s weights as a fairchem v1 checkpoint file (see
    :func:`~sciml.models.equiformer_v2.fairchem.fairchem_checkpoint_dict`), atomically."""
    return atomic_torch_save(fairchem_checkpoint_dict(model), path)

"""Reading and writing sciml files."""

from sciml.io.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "atomic_torch_save", "load_checkpoint", "save_checkpoint"]

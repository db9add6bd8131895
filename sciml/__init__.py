"""sciml: equivariant scientific machine learning for molecules, crystals and PDEs."""

from sciml.version import __version__

__all__ = ["__version__", "predict"]


def predict(structures, model, batch_size: int = 32, **kwargs):
    """Energies, forces (and stress) of many ``ase.Atoms`` in batches; see :func:`sciml.inference.predict`."""
    from sciml.inference import predict as _predict

    return _predict(structures, model, batch_size=batch_size, **kwargs)

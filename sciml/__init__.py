"""sciml: equivariant scientific machine learning for molecules, crystals and PDEs."""

from sciml.threads import configure_openmp

__version__ = "0.1.0"

# before torch is imported: OpenMP threads that sleep while waiting (see sciml.threads)
configure_openmp()


def predict(structures, model, batch_size: int = 32, **kwargs):
    """Energies, forces (and stress) of many ``ase.Atoms`` in batches; see :func:`sciml.inference.predict`."""
    from sciml.inference import predict as _predict

    return _predict(structures, model, batch_size=batch_size, **kwargs)

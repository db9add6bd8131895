"""sciml: equivariant scientific machine learning for molecules, crystals and PDEs."""

__version__ = "0.1.0"

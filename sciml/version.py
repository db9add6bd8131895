"""sciml's version, in one module that imports nothing so every layer may read it.

``pyproject.toml`` reads it for the package metadata; ``sciml.__version__`` re-exports it.
"""

__version__ = "0.1.0"

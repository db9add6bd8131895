"""ComFormer (Yan et al., ICLR 2024): iComFormer and eComFormer on the lattice-based crystal graph."""

from sciml.models.comformer.model import (
    UNUSED_REFERENCE_PARAMETERS,
    ComFormer,
    ComFormerOptions,
    EComFormer,
    EComFormerOptions,
    IComFormer,
    IComFormerOptions,
)

__all__ = ["ComFormer", "ComFormerOptions", "IComFormer", "IComFormerOptions", "EComFormer", "EComFormerOptions",
           "UNUSED_REFERENCE_PARAMETERS"]

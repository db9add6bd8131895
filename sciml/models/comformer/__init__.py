"""ComFormer (Yan et al., ICLR 2024): iComFormer and eComFormer on the lattice-based crystal graph."""

from sciml.models.comformer.model import UNUSED_REFERENCE_PARAMETERS, ComFormer, EComFormer, IComFormer

__all__ = ["ComFormer", "IComFormer", "EComFormer", "UNUSED_REFERENCE_PARAMETERS"]

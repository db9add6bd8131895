"""PDE data: the 2D Navier-Stokes solver, Gaussian random fields, grid symmetries and dataset readers."""

from sciml.data.pde.navier_stokes import (
    FORCINGS,
    forcing_field,
    generate_navier_stokes,
    solve_navier_stokes,
)
from sciml.data.pde.random_fields import gaussian_random_field
from sciml.data.pde.readers import (
    PDEBENCH_KINDS,
    PDEDataError,
    PDEFields,
    read_fno_mat,
    read_pdebench,
    write_fno_mat,
)
from sciml.data.pde.symmetry import reflect_periodic, rotate90_periodic

__all__ = [
    "FORCINGS",
    "PDEBENCH_KINDS",
    "PDEDataError",
    "PDEFields",
    "forcing_field",
    "gaussian_random_field",
    "generate_navier_stokes",
    "read_fno_mat",
    "read_pdebench",
    "reflect_periodic",
    "rotate90_periodic",
    "solve_navier_stokes",
    "write_fno_mat",
]

"""Running training on clusters: Slurm batch scripts that start ``sciml train`` under torchrun."""

from sciml.hpc.slurm import SlurmJob, render_sbatch, submit_sbatch, write_sbatch

__all__ = ["SlurmJob", "render_sbatch", "submit_sbatch", "write_sbatch"]

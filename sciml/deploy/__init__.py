"""Deployment of trained models outside Python training code: AOTInductor packages (.pt2) of a
model's energy/forces/virial function (:mod:`sciml.deploy.export`)."""

from sciml.deploy.export import ExportError, ExportedPotential, export_model, load_exported, load_potential

__all__ = ["ExportError", "ExportedPotential", "export_model", "load_exported", "load_potential"]

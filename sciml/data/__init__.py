"""Datasets and dataset generators."""

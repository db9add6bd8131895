"""Datasets and dataset generators."""

from sciml.data.readers import check_structures, load_graph_dataset, read_structures

__all__ = ["check_structures", "load_graph_dataset", "read_structures"]

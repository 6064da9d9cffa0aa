"""Datasets: embedded demos, loaders for real sets, scale and nuclei measures."""
from .base import Dataset, DatasetError, Sample, Skipped, fingerprint, limit
from .images import ImageReadError, read_rgb
from .registry import KINDS, list_datasets, load_dataset, parse_spec

__all__ = ["Dataset", "DatasetError", "Sample", "Skipped", "fingerprint", "limit",
           "ImageReadError", "read_rgb", "KINDS", "list_datasets", "load_dataset", "parse_spec"]

"""Datasets: typed examples from bundled demo data and the public formats users bring.

Formats are plug-ins named in ``harness.registry.DATASET_FORMATS`` (loaded on first use)."""

from harness.core import Example
from harness.data.base import DatasetConfig, bundled_path, load_dataset
from harness.registry import DATASET_FORMATS

__all__ = ["DATASET_FORMATS", "DatasetConfig", "Example", "bundled_path", "load_dataset"]

"""Datasets: typed examples from bundled demo data and the public formats users bring.

Formats are plug-ins named in ``harness.core.DATASET_FORMATS`` (loaded on first use)."""

from harness.core import DATASET_FORMATS, Example
from harness.data.base import DatasetConfig, bundled_path, load_dataset

__all__ = ["DATASET_FORMATS", "DatasetConfig", "Example", "bundled_path", "load_dataset"]

"""Datasets: typed examples from bundled demo data and the public formats users bring."""

from harness.data.base import Example, load_dataset
from harness.data import loaders as _loaders  # noqa: F401  (registers the formats)
from harness.data.base import DATASET_FORMATS, bundled_path

__all__ = ["DATASET_FORMATS", "Example", "bundled_path", "load_dataset"]

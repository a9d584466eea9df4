"""Datasets: contrast pairs (clean/corrupted + answer tokens) and plain token chunks."""

from src.data.dataset import ContrastDataset, TokenDataset
from src.data.loading import DATASETS, load_dataset

__all__ = ["DATASETS", "ContrastDataset", "TokenDataset", "load_dataset"]

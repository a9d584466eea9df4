"""Foundation: datasets (contrast pairs, plain token chunks, probes such as repeated tokens)
and the activation cache. Tensors and files in, datasets out; no analysis, no figures
(imports only ``src.utils`` and ``src.models``)."""

from typing import Any

from src.data.dataset import ContrastDataset, TokenDataset

__all__ = ["DATASETS", "ContrastDataset", "TokenDataset", "load_dataset"]


def __getattr__(name: str) -> Any:
    # src.data.loading imports src.models (the toy's BOS token), and src.models imports
    # src.data (repeated tokens): it is imported on first use, not with the package.
    if name in ("DATASETS", "load_dataset"):
        from src.data import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'src.data' has no attribute {name!r}")

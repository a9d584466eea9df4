"""Will a run fit? The memory of a model's weights plus a run's activations (and gradients),
estimated before loading, against the memory the device has free.

Dimensions come from the family table for a table name, else from the checkpoint's
`config.json` (a local directory, or a Hugging Face id already in the local cache), so the
check needs no download. The estimate is deliberately simple (weights, plus every cached
activation of a forward; twice that with a backward pass): it exists to stop a run that
cannot fit with one line saying what would, not to predict peak memory to the megabyte.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from src.models.families import Family, PatchingDefaults, load_families

BYTES_PER_PARAM = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
GB = 1e9
FUSED_QKV = ("gpt2", "gpt_neox")  # model types with one fused q/k/v projection


class InsufficientMemoryError(RuntimeError):
    """The run would not fit in the memory of its device(s)."""


def _first(config: dict, *keys: str, default: int | None = None) -> int | None:
    return next((config[k] for k in keys if config.get(k) is not None), default)


def family_from_hf_config(name: str, config: dict) -> Family:
    """A Family row (dimensions only) from a Hugging Face `config.json`: GPT-2, GPT-NeoX,
    Llama-style (Gemma, Qwen, Mistral, ...) key names. The weights are counted from them as
    a TransformerBridge holds them (the table's `n_params`); norms and biases are left out."""
    d = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(config, "num_attention_heads", "n_head")
    if d is None or layers is None or heads is None:
        raise ValueError(f"{name}: config.json has no hidden size, layer or head count")
    kv = _first(config, "num_key_value_heads", default=heads)
    d_head = _first(config, "head_dim", default=d // heads)
    d_mlp = _first(config, "intermediate_size", "n_inner", default=4 * d)
    vocab = _first(config, "vocab_size", default=0)
    gated = config.get("model_type") not in ("gpt2", "gpt_neox", "gptj", "gpt_neo", "opt")
    attention = 2 * d * heads * d_head + 2 * d * kv * d_head
    if config.get("model_type") in FUSED_QKV:  # the bridge keeps split q/k/v copies too
        attention += 3 * d * heads * d_head
    mlp = (3 if gated else 2) * d * d_mlp
    n_ctx = _first(config, "max_position_embeddings", "n_positions", default=0)
    learned_positions = n_ctx * d if config.get("model_type") == "gpt2" else 0
    embeddings = 2 * vocab * d + learned_positions  # the bridge unties a tied unembedding
    return Family(
        name=name, hf_id=None, n_params=layers * (attention + mlp) + embeddings,
        n_layers=layers, d_model=d, n_heads=heads, n_kv_heads=kv, d_head=d_head, d_mlp=d_mlp,
        gated_mlp=gated, n_ctx=n_ctx,
        d_vocab=vocab, act_fn=None, normalization="", positional_embedding="", dataset=None,
        sae_release=None, sae_id=None, patching_defaults=PatchingDefaults((), 0, 0),
    )  # fmt: skip


def _cached_config(hf_id: str) -> Path | None:
    """`config.json` of `hf_id` in the local Hugging Face cache, without a network call."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hf_id, "config.json")
    return Path(found) if isinstance(found, str) else None


def model_dims(name: str) -> Family | None:
    """The dimensions of model `name` (table name, local checkpoint, or cached Hugging Face
    id), or None when they cannot be known without a download."""
    families = load_families()
    if name in families:
        return families[name]
    by_id = {row.hf_id: row for row in families.values() if row.hf_id}
    if name in by_id:
        return by_id[name]
    path = Path(name).expanduser() / "config.json"
    config = path if path.is_file() else _cached_config(name)
    if config is None:
        return None
    return family_from_hf_config(name, json.loads(config.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class MemoryEstimate:
    """GB of a run: the weights (on each device) and the activations (and their gradients)."""

    weights_gb: float
    activations_gb: float

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.activations_gb


def estimate_memory(
    dims: Family,
    dtype: str,
    batch: int,
    seq_len: int,
    *,
    gradients: bool = False,
    n_devices: int = 1,
) -> MemoryEstimate:
    """The weights in `dtype` (split over `n_devices`), and the activations of a forward on
    `batch` prompts of `seq_len` tokens: all of them (a full cache) when `gradients` (a
    backward pass keeps them, and their gradients take as much again), else one block's
    working set and the logits."""
    size = BYTES_PER_PARAM[dtype]
    weights = dims.n_params * size / n_devices
    tokens = batch * seq_len
    if gradients:
        activations = 2 * dims.cache_floats_per_token(seq_len) * tokens * size
    else:
        block = 10 * dims.d_model + 3 * dims.n_heads * seq_len + 3 * dims.d_mlp
        activations = (block + 2 * dims.d_vocab) * tokens * size
    return MemoryEstimate(weights / GB, activations / GB)


def free_memory_gb(device: object) -> float:
    """Memory free on `device` now: the GPU's own count for CUDA, available RAM otherwise."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free / GB
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB


def check_fits(
    name: str,
    dims: Family,
    dtype: str,
    batch: int,
    seq_len: int,
    available_gb: float,
    *,
    device: str = "cuda",
    gradients: bool = False,
    n_devices: int = 1,
) -> MemoryEstimate:
    """The run's estimate; InsufficientMemoryError (one line: what it needs, what is free,
    what would fit) when it exceeds `available_gb` (on each of `n_devices`)."""
    need = estimate_memory(dims, dtype, batch, seq_len, gradients=gradients, n_devices=n_devices)
    if need.total_gb <= available_gb:
        return need
    hints = []
    room = available_gb - need.weights_gb
    if room > 0 and batch > 1:
        fits = int(batch * room / need.activations_gb)
        if fits >= 1:
            hints.append(f"a batch of {fits} (--batch-size {fits})")
    if BYTES_PER_PARAM[dtype] == 4:
        half = estimate_memory(
            dims, "bfloat16", batch, seq_len, gradients=gradients, n_devices=n_devices
        )
        hints.append(f"model.dtype: bfloat16 ({half.total_gb:.1f} GB)")
    hints.append(f"a device with at least {need.total_gb * 1.1:.0f} GB free")
    if "cuda" in str(device):
        hints.append(f"model.n_devices: {n_devices + 1} to split the layers over more GPUs")
    what = "activations and gradients" if gradients else "activations"
    raise InsufficientMemoryError(
        f"{name} needs about {need.total_gb:.1f} GB on {device} ({need.weights_gb:.1f} GB of "
        f"{dtype} weights + {need.activations_gb:.1f} GB of {what} for {batch} x {seq_len} "
        f"tokens) but {available_gb:.1f} GB is free: try {'; or '.join(hints)}"
    )

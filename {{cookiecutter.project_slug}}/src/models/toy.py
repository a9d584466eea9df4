"""Offline toy models: small transformers trained here in under a minute, then cached.

`toy-induction` is a 2-layer attention-only transformer trained on random tokens containing a
chunk repeated at a random offset. Predicting the second copy requires the induction circuit:
a previous-token head in layer 0 and induction heads in layer 1. (A fixed offset would teach a
positional shortcut instead, so the offset varies.) Token 0 is BOS, always at position 0.

The trained weights are cached as `<name>-<hash>.safetensors` (plus a JSON of the spec, training
time, loss and head scores) in `data/models/` of the project, or in `$MECH_INTERP_TOY_CACHE`.
The hash covers the spec and the torch / transformer-lens versions, so a change retrains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

from src.data.repeated import repeated_random_tokens
from src.models.head_scores import induction_scores, prev_token_scores
from src.utils.files import PROJECT_ROOT, write_atomic, write_text_atomic

TOY_BOS_TOKEN_ID = 0
CACHE_ENV_VAR = "MECH_INTERP_TOY_CACHE"


@dataclass(frozen=True)
class ToyModelSpec:
    """Architecture, data and training hyperparameters of a toy model; fixes its weights."""

    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_head: int = 16
    d_vocab: int = 64
    n_ctx: int = 32
    normalization_type: str | None = "LN"
    bos_token_id: int = TOY_BOS_TOKEN_ID
    min_chunk: int = 3
    max_chunk: int = 15
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0

    def bridge_config(self) -> TransformerBridgeConfig:
        """The TransformerBridge config of the (attention-only) architecture."""
        return TransformerBridgeConfig(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_vocab=self.d_vocab,
            n_ctx=self.n_ctx,
            normalization_type=self.normalization_type,
            attn_only=True,
            positional_embedding_type="standard",
            seed=self.seed,
        )


TOY_MODELS: dict[str, ToyModelSpec] = {"toy-induction": ToyModelSpec()}


def spec_hash(spec: ToyModelSpec) -> str:
    """Short hash of the spec and of the library versions that shape the weights."""
    payload = dataclasses.asdict(spec) | {
        "torch": torch.__version__,
        "transformer_lens": version("transformer-lens"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def toy_cache_dir() -> Path:
    """`$MECH_INTERP_TOY_CACHE` if set, else `<project root>/data/models`."""
    return Path(os.environ.get(CACHE_ENV_VAR) or PROJECT_ROOT / "data" / "models")


def cache_path(name: str, spec: ToyModelSpec, cache_dir: Path | None = None) -> Path:
    """Where the weights of `name` trained with `spec` are cached."""
    return (cache_dir or toy_cache_dir()) / f"{name}-{spec_hash(spec)}.safetensors"


def induction_batch(
    spec: ToyModelSpec, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens with one chunk repeated later, and the mask of predictable positions.

    Each row is `[BOS, random...]` in which a chunk of random length `min_chunk..max_chunk`
    starting at a random position reappears at a random later position. The mask is True at
    the positions whose *next* token is predictable (inside the second copy), so a loss on
    `logits[:, :-1]` against `tokens[:, 1:]` uses `mask[:, :-1]`.
    """
    n = spec.n_ctx
    if 2 * spec.max_chunk > n - 1:
        raise ValueError(f"two chunks of {spec.max_chunk} tokens do not fit after BOS in {n}")
    tokens = torch.randint(1, spec.d_vocab, (batch_size, n), generator=generator)
    tokens[:, 0] = spec.bos_token_id
    length = torch.randint(spec.min_chunk, spec.max_chunk + 1, (batch_size, 1), generator=generator)
    # first copy starts in [1, n - 2L], the second in [first + L, n - L]
    first = 1 + (torch.rand(batch_size, 1, generator=generator) * (n - 2 * length)).long()
    n_second = n - length - (first + length) + 1
    second = first + length + (torch.rand(batch_size, 1, generator=generator) * n_second).long()
    pos = torch.arange(n)
    in_second = (pos >= second) & (pos < second + length)
    tokens = tokens.gather(1, torch.where(in_second, pos - (second - first), pos))
    mask = (pos >= second) & (pos < second + length - 1)
    return tokens, mask


def build_toy_model(spec: ToyModelSpec) -> TransformerBridge:
    """The untrained model of `spec` (initialised deterministically from `spec.seed`)."""
    return TransformerBridge.boot_native(spec.bridge_config())


def train_toy_model(
    spec: ToyModelSpec, progress: bool = True, threads: int = 1
) -> tuple[TransformerBridge, dict[str, float]]:
    """Train the toy model of `spec` on CPU; returns it (eval mode) and training stats.

    One thread by default: two are ~25% faster on an idle 2-core CPU but several times slower
    when other work shares it (tests, a second training); the weights do not depend on it.

    Deterministic: the seed fixes the initialisation and every batch, so a spec always gives the
    same weights on the same torch build (the thread count made no difference in our checks).
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_toy_model(spec)
        model.train()
        generator = torch.Generator().manual_seed(spec.seed)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay
        )
        start = time.perf_counter()
        bar = tqdm(
            range(spec.steps), desc="training toy model", disable=not progress, mininterval=1
        )
        for _ in bar:
            tokens, mask = induction_batch(spec, spec.batch_size, generator)
            log_probs = model(tokens)[:, :-1].log_softmax(-1)
            target_log_probs = log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
            loss = -(target_log_probs * mask[:, :-1]).sum() / mask[:, :-1].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    return model, {"train_seconds": seconds, "final_loss": loss.item()}


def head_scores(model: TransformerBridge, spec: ToyModelSpec) -> dict[str, list[list[float]]]:
    """Induction and previous-token scores on 100 repeated random sequences of max length."""
    device = next(model.parameters()).device
    half_len = (spec.n_ctx - 1) // 2
    tokens = repeated_random_tokens(100, half_len, spec.d_vocab, spec.bos_token_id, 1, device)
    return {
        "induction": induction_scores(model, tokens).tolist(),
        "prev_token": prev_token_scores(model, tokens).tolist(),
    }


def save_toy_model(model: TransformerBridge, path: Path, metadata: dict) -> None:
    """Write the weights to `path` and `metadata` to the JSON beside it, both atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, tmp))
    write_text_atomic(path.with_suffix(".json"), json.dumps(metadata, indent=2))


def load_toy_model(
    name: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    spec: ToyModelSpec | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> TransformerBridge:
    """The trained toy model `name` (eval mode): from the cache, else trained and cached.

    `spec` overrides `TOY_MODELS[name]`; a cache file that cannot be read is retrained with a
    warning.
    """
    if spec is None:
        if name not in TOY_MODELS:
            raise ValueError(f"unknown toy model {name!r}; known: {sorted(TOY_MODELS)}")
        spec = TOY_MODELS[name]
    path = cache_path(name, spec, cache_dir)
    model = None
    if path.exists():
        try:
            model = build_toy_model(spec)
            model.load_state_dict(load_file(path))
        except Exception as error:  # unreadable or stale cache: retrain
            warnings.warn(f"retraining {name}: cannot read {path} ({error})", stacklevel=2)
            model = None
    if model is None:
        model, stats = train_toy_model(spec, progress=progress)
        metadata = {
            "name": name,
            "spec": dataclasses.asdict(spec),
            "torch": torch.__version__,
            "transformer_lens": version("transformer-lens"),
            **stats,
            "scores": head_scores(model, spec),
        }
        save_toy_model(model, path, metadata)
    return model.to(device=device, dtype=dtype, print_details=False).eval()

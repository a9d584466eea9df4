"""Tiny random-init Hugging Face checkpoints of each supported architecture, saved locally.

`load_model("<directory>")` on such a checkpoint runs exactly the code a downloaded model
runs (`TransformerBridge.boot_transformers` on `save_pretrained` output), with no network:
the tests prove every method on each architecture this way, and the benchmarks time a
GPT-2-small-shaped one. The tokenizer is a byte-level BPE trained here on a corpus of IOI
sentences, so the IOI names, places and objects are single tokens, as in GPT-2.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

# Architectures TransformerLens's bridge supports that the tests prove (Hugging Face classes).
ARCHITECTURES: tuple[str, ...] = ("gpt2", "gpt-neox", "gemma-2", "qwen2")
SPECIAL_TOKEN = "<|endoftext|>"  # BOS, EOS, padding and unknown, as in GPT-2


def sample_corpus(n_sentences: int = 2000, seed: int = 0) -> list[str]:
    """IOI-style English sentences (every template, name, place and object of
    `src.data.ioi`), seeded: a tokenizer trained on them encodes each name as one token."""
    from src.data.ioi import NAMES, OBJECTS, PLACES, TEMPLATES

    rng = random.Random(seed)
    sentences = []
    for i in range(n_sentences):
        io, s = rng.sample(NAMES, 2)
        template = TEMPLATES[i % len(TEMPLATES)]
        filled = template.format(
            IO=io, S1=s, S2=s, PLACE=rng.choice(PLACES), OBJECT=rng.choice(OBJECTS)
        )
        sentences.append(f"{filled} {io}.")
    return sentences


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on `texts`, as a
    `PreTrainedTokenizerFast` whose BOS/EOS/pad token is `<|endoftext|>` (id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
    )


def _config(architecture: str, vocab: int, n_layers: int, d_model: int, n_heads: int,
            d_mlp: int, n_ctx: int) -> Any:  # fmt: skip
    """The Hugging Face config of `architecture` at these dimensions (grouped queries, two
    query heads per key/value head, for Gemma-2 and Qwen2, as in the real models)."""
    import transformers

    special = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    d_head = d_model // n_heads
    if architecture == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers,
            n_head=n_heads, n_inner=d_mlp, **special,
        )  # fmt: skip
    if architecture == "gpt-neox":
        return transformers.GPTNeoXConfig(
            vocab_size=vocab, max_position_embeddings=n_ctx, hidden_size=d_model,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, intermediate_size=d_mlp,
            **special,
        )  # fmt: skip
    grouped = {
        "vocab_size": vocab, "max_position_embeddings": n_ctx, "hidden_size": d_model,
        "num_hidden_layers": n_layers, "num_attention_heads": n_heads,
        "num_key_value_heads": max(1, n_heads // 2), "head_dim": d_head,
        "intermediate_size": d_mlp, **special,
    }  # fmt: skip
    if architecture == "gemma-2":
        return transformers.Gemma2Config(**grouped, sliding_window=max(4, n_ctx // 4))
    if architecture == "qwen2":
        return transformers.Qwen2Config(**grouped)
    raise ValueError(f"architecture={architecture!r} is not one of {list(ARCHITECTURES)}")


def save_checkpoint(
    architecture: str,
    directory: str | Path,
    tokenizer: Any,
    *,
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int | None = None,
    n_ctx: int = 128,
    vocab_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Save a random-init `architecture` model (seeded) and `tokenizer` to `directory`, as
    `save_pretrained` does for a downloaded model; returns the directory. The vocabulary is
    the tokenizer's unless `vocab_size` (at least as large) is given."""
    import transformers

    vocab = vocab_size or len(tokenizer)
    if vocab < len(tokenizer):
        raise ValueError(f"vocab_size={vocab} is smaller than the tokenizer's {len(tokenizer)}")
    config = _config(architecture, vocab, n_layers, d_model, n_heads, d_mlp or 4 * d_model, n_ctx)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory

"""The toy model learns the induction circuit, trains deterministically and is cached safely."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import torch

from src.data.repeated import repeated_random_tokens
from src.models.head_scores import induction_scores, prev_token_scores
from src.models.toy import (
    TOY_BOS_TOKEN_ID,
    TOY_MODELS,
    ToyModelSpec,
    cache_path,
    induction_batch,
    load_toy_model,
    spec_hash,
    train_toy_model,
)

SPEC = TOY_MODELS["toy-induction"]
TINY = dataclasses.replace(SPEC, d_model=16, n_heads=2, d_head=8, steps=5, batch_size=8)


@pytest.fixture(scope="module")
def repeated_tokens() -> torch.Tensor:
    return repeated_random_tokens(50, 15, SPEC.d_vocab, TOY_BOS_TOKEN_ID, seed=7)


def test_layer1_has_an_induction_head(toy_model, repeated_tokens):
    scores = induction_scores(toy_model, repeated_tokens)
    assert scores.shape == (2, 4)
    assert scores[1].max() >= 0.8, scores
    assert scores[0].max() < 0.2, scores  # layer 0 cannot do induction alone


def test_layer0_has_a_previous_token_head(toy_model, repeated_tokens):
    scores = prev_token_scores(toy_model, repeated_tokens)
    assert scores[0].max() >= 0.8, scores


def test_toy_model_predicts_the_second_copy(toy_model, repeated_tokens):
    predictions = toy_model(repeated_tokens).argmax(-1)
    correct = predictions[:, 16:-1] == repeated_tokens[:, 17:]
    assert correct.float().mean() > 0.9
    assert toy_model.cfg.d_vocab == SPEC.d_vocab and not toy_model.training


def test_batches_repeat_a_chunk_at_varying_offsets():
    tokens, mask = induction_batch(SPEC, 256, torch.Generator().manual_seed(0))
    assert tokens.shape == mask.shape == (256, SPEC.n_ctx)
    assert (tokens[:, 0] == TOY_BOS_TOKEN_ID).all() and (tokens[:, 1:] != TOY_BOS_TOKEN_ID).all()
    rows, positions = mask.nonzero(as_tuple=True)
    # every masked position predicts a token that appeared earlier, right after the same token
    for row, pos in zip(rows[:200].tolist(), positions[:200].tolist(), strict=True):
        seq = tokens[row]
        earlier = [j for j in range(1, pos) if seq[j] == seq[pos] and seq[j + 1] == seq[pos + 1]]
        assert earlier, (row, pos)
    first_masked = mask.float().argmax(1)
    assert len(set(first_masked.tolist())) > 10  # the offset varies


def test_spec_hash_is_stable_and_sensitive():
    assert spec_hash(SPEC) == spec_hash(ToyModelSpec(**dataclasses.asdict(SPEC)))
    assert spec_hash(dataclasses.replace(SPEC, steps=SPEC.steps + 1)) != spec_hash(SPEC)
    assert spec_hash(SPEC) in cache_path("toy-induction", SPEC).name


def test_training_is_deterministic():
    first, stats = train_toy_model(TINY, progress=False)
    second, _ = train_toy_model(TINY, progress=False, threads=2)
    other, _ = train_toy_model(dataclasses.replace(TINY, seed=1), progress=False)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not torch.equal(first.state_dict()["embed.weight"], other.state_dict()["embed.weight"])
    assert stats["final_loss"] > 0 and stats["train_seconds"] > 0


def test_second_load_reads_the_cache(toy_model):
    start = time.perf_counter()
    again = load_toy_model("toy-induction", progress=False)
    assert time.perf_counter() - start < 5
    for name, value in toy_model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    metadata = json.loads(cache_path("toy-induction", SPEC).with_suffix(".json").read_text())
    assert metadata["spec"] == dataclasses.asdict(SPEC)
    assert max(metadata["scores"]["induction"][1]) >= 0.8


def test_corrupt_cache_file_is_retrained(tmp_path):
    trained = load_toy_model("tiny", spec=TINY, cache_dir=tmp_path, progress=False)
    path = cache_path("tiny", TINY, tmp_path)
    assert path.exists() and path.with_suffix(".json").exists()
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by an interrupted copy
    with pytest.warns(UserWarning, match="retraining tiny"):
        retrained = load_toy_model("tiny", spec=TINY, cache_dir=tmp_path, progress=False)
    assert torch.equal(trained.state_dict()["embed.weight"], retrained.state_dict()["embed.weight"])
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    reloaded = load_toy_model("tiny", spec=TINY, cache_dir=tmp_path, progress=False)
    assert torch.equal(trained.state_dict()["embed.weight"], reloaded.state_dict()["embed.weight"])


def test_unknown_toy_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="toy-induction"):
        load_toy_model("toy-nonexistent")

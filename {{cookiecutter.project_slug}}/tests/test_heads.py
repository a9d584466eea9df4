"""Head scores agree with a by-hand reading of the attention patterns; the heatmap is written."""

from __future__ import annotations

import pytest
import torch

from src.data.repeated import repeated_random_tokens
from src.models.head_scores import attention_patterns, induction_scores, prev_token_scores
from src.models.toy import TOY_BOS_TOKEN_ID
from src.visualization.heads import plot_head_scores

HALF = 6


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return repeated_random_tokens(4, HALF, 64, TOY_BOS_TOKEN_ID, seed=3)


def test_repeated_random_tokens():
    tokens = repeated_random_tokens(5, 7, 10, bos_token_id=4, seed=0)
    assert tokens.shape == (5, 15) and tokens.dtype == torch.long
    assert (tokens[:, 0] == 4).all() and (tokens[:, 1:] != 4).all()
    assert torch.equal(tokens[:, 1:8], tokens[:, 8:])
    assert tokens.max() < 10
    assert torch.equal(tokens, repeated_random_tokens(5, 7, 10, bos_token_id=4, seed=0))
    assert not torch.equal(tokens, repeated_random_tokens(5, 7, 10, bos_token_id=4, seed=1))


def test_scores_match_a_hand_computation(toy_model, tokens):
    _, cache = toy_model.run_with_cache(tokens)
    induction = induction_scores(toy_model, tokens)
    prev = prev_token_scores(toy_model, tokens)
    for layer in range(2):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, query, key]
        for head in range(4):
            # second-half query q (HALF+1..2*HALF) -> key q - HALF + 1, the token after the
            # first occurrence of tokens[q]
            to_next = [
                pattern[b, head, q, q - HALF + 1].item()
                for b in range(len(tokens))
                for q in range(HALF + 1, 2 * HALF + 1)
            ]
            to_prev = [
                pattern[b, head, q, q - 1].item()
                for b in range(len(tokens))
                for q in range(1, 2 * HALF + 1)
            ]
            assert induction[layer, head].item() == pytest.approx(sum(to_next) / len(to_next))
            assert prev[layer, head].item() == pytest.approx(sum(to_prev) / len(to_prev))


def test_attention_patterns_shape_and_rows(toy_model, tokens):
    patterns = attention_patterns(toy_model, tokens)
    assert patterns.shape == (2, 4, 4, 1 + 2 * HALF, 1 + 2 * HALF)
    assert torch.allclose(patterns.sum(-1), torch.ones(()))
    assert patterns.triu(diagonal=1).abs().max() == 0  # causal


def test_induction_scores_reject_unrepeated_tokens(toy_model, tokens):
    with pytest.raises(ValueError, match="BOS, x, x"):
        induction_scores(toy_model, tokens.flip(-1))


def test_plot_head_scores_writes_a_png(tmp_path):
    scores = torch.tensor([[0.1, 0.9, 0.2], [0.95, 0.0, 0.5]])
    path = plot_head_scores(scores, "Induction score", tmp_path / "figs" / "induction.png")
    assert path == tmp_path / "figs" / "induction.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="n_layers, n_heads"):
        plot_head_scores(scores[0], "bad", tmp_path / "bad.png")

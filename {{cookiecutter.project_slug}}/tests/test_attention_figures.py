"""Attention-pattern figures: the toy model's heads drawn as they are, HTML that opens offline."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from matplotlib.image import AxesImage, imread

from src.analysis.attention import attention_patterns, head_patterns, parse_head
from src.analysis.tokens import token_strings
from src.models.toy import TOY_BOS_TOKEN_ID
from src.visualization.attention import (
    attention_figure,
    attention_html,
    plot_attention_patterns,
    save_attention_figures,
    save_attention_html,
)

PREV_TOKEN_HEAD = (0, 2)  # the toy model's previous-token head (src/models/toy.py)


@pytest.fixture(scope="module")
def prompt(toy_model):
    """BOS, then 10 random tokens repeated: the induction heads attend to the token after
    the previous occurrence of the current one."""
    generator = torch.Generator().manual_seed(0)
    chunk = torch.randint(1, toy_model.cfg.d_vocab, (10,), generator=generator)
    return torch.cat([torch.tensor([TOY_BOS_TOKEN_ID]), chunk, chunk])


def image_axes(fig):
    return [ax for ax in fig.axes if any(isinstance(a, AxesImage) for a in ax.get_children())]


def test_parse_head():
    assert parse_head("a1.h0") == (1, 0) == parse_head("L1H0") == parse_head((1, 0))
    with pytest.raises(ValueError, match="'head3'"):
        parse_head("head3")


def test_patterns_known_heads(toy_model, prompt):
    patterns = attention_patterns(toy_model, prompt, [PREV_TOKEN_HEAD, "a1.h0"])
    n = len(prompt)
    assert patterns.shape == (2, n, n)
    assert torch.allclose(patterns.sum(-1), torch.ones(2, n), atol=1e-5)  # rows sum to 1
    assert torch.all(patterns.triu(1) == 0)  # causal: nothing attends ahead
    # a0.h2 attends to the previous token: the sub-diagonal holds most of each row
    assert torch.diagonal(patterns[0], offset=-1).mean() > 0.9
    # a1.h0 is an induction head: in the second copy (positions 11..20), position p
    # attends to p - 9, the token after the first occurrence of the current token
    second = torch.arange(11, 21)
    assert (patterns[1, second].argmax(-1) == second - 9).float().mean() >= 0.9


def test_attention_patterns_rejects_bad_heads(toy_model, prompt):
    with pytest.raises(ValueError, match=r"a2\.h0 is out of range .*layers 0\.\.1"):
        attention_patterns(toy_model, prompt, [(2, 0)])
    with pytest.raises(ValueError, match="at least one"):
        attention_patterns(toy_model, prompt, [])
    with pytest.raises(ValueError, match="one prompt"):
        attention_patterns(toy_model, torch.stack([prompt, prompt]), [(0, 0)])


def test_figure_draws_each_head_with_token_labels(toy_model, prompt):
    patterns = attention_patterns(toy_model, prompt, [PREV_TOKEN_HEAD, (1, 0), (1, 1)])
    labels = token_strings(toy_model, prompt)
    assert labels == [str(t) for t in prompt.tolist()]  # no tokenizer: the ids
    fig = attention_figure(patterns, labels, head_names=["a0.h2", "a1.h0", "a1.h1"], title="t")
    panels = image_axes(fig)
    assert [ax.get_title() for ax in panels] == ["a0.h2", "a1.h0", "a1.h1"]
    for ax, pattern in zip(panels, patterns, strict=True):
        drawn = np.asarray(ax.get_images()[0].get_array())
        assert np.allclose(drawn, pattern.numpy())
        assert [t.get_text() for t in ax.get_xticklabels()] == labels
    # the previous-token head's plotted rows peak on the sub-diagonal
    drawn = np.asarray(panels[0].get_images()[0].get_array())
    assert (drawn[1:].argmax(-1) == np.arange(len(prompt) - 1)).all()


def test_plot_writes_png_and_rejects_bad_input(tmp_path):
    pattern = torch.tril(torch.ones(5, 5))
    pattern = pattern / pattern.sum(-1, keepdim=True)
    path = plot_attention_patterns(pattern, tmp_path / "sub" / "attn.png", list("abcde"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(path).shape[0] > 100
    assert [p.name for p in path.parent.iterdir()] == ["attn.png"]  # no temp file left
    with pytest.raises(ValueError, match="labels must have 5"):
        attention_figure(pattern, ["a"])
    with pytest.raises(ValueError, match="dest == src"):
        attention_figure(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="head_names must have 1"):
        attention_figure(pattern, head_names=["x", "y"])


def test_html_is_self_contained_and_holds_the_data(tmp_path):
    pattern = torch.tensor([[[1.0, 0.0], [0.25, 0.75]]])
    text = attention_html(pattern, ["<bos>", "x"], head_names=["a0.h2"], title="A<B")
    assert not re.search(r"<script[^>]*\bsrc=", text)  # no script loaded from anywhere
    assert 'src="http' not in text and "unpkg.com" not in text
    assert "CircuitsVis.AttentionHeads" in text and len(text) > 100_000  # the library, inline
    match = re.search(r'\{"attention": .*?"tokens": \[[^\]]*\]', text)
    data = json.loads(match.group(0) + "}")
    assert data["attention"] == [[[1.0, 0.0], [0.25, 0.75]]]
    assert data["tokens"] == ["<bos>", "x"]
    assert "<title>A&lt;B</title>" in text
    path = save_attention_html(pattern, tmp_path / "a.html", ["<bos>", "x"])
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_head_patterns_drawn_as_png_and_html(toy_model, prompt, tmp_path):
    view = head_patterns(toy_model, prompt[None], ["a0.h2"])
    paths = save_attention_figures(
        view.patterns, tmp_path / "toy_attn", view.labels, head_names=view.head_names
    )
    assert [p.name for p in paths] == ["toy_attn.png", "toy_attn.html"]
    text = paths[1].read_text(encoding="utf-8")
    assert '"attentionHeadNames": ["a0.h2"]' in text
    assert f'"tokens": {json.dumps(token_strings(toy_model, prompt))}' in text


def test_tick_labels_draw_as_written():
    """Dollar signs are not mathtext, and control characters (a byte-level BPE token can be
    one; no font has a glyph for it) show as their code."""
    from src.visualization.attention import _mathtext_safe

    assert _mathtext_safe("a\x7fb$1\n") == "a\\x7fb\\$1\\n"


def test_key_value_head_effects_go_to_their_query_heads():
    """Grouped-query models: a k/v sweep's entry per key/value head scores each query head of
    its group (2 key/value heads, 4 query heads: kv 1 -> query heads 2 and 3); a full-width
    sweep is unchanged; the strongest head over components is the largest."""
    from src.analysis.attention import component_head_scores, strongest

    kv = {"axes": ["layer", "head"], "normalized": {"mean": [[0.1, -0.9]]}}
    heads = {"axes": ["layer", "head"], "normalized": {"mean": [[0.0, 0.2, 0.3, 0.5]]}}
    scores = component_head_scores({"k": kv, "head_out": heads}, n_heads=4)
    assert scores == pytest.approx({(0, 0): 0.1, (0, 1): 0.2, (0, 2): 0.9, (0, 3): 0.9})
    assert strongest(scores, 2) == [(0, 2), (0, 3)]
    # without n_heads, entries keep their own index (the key/value head's)
    assert component_head_scores({"k": kv}) == pytest.approx({(0, 0): 0.1, (0, 1): 0.9})

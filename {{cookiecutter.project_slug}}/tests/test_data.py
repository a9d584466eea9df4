"""Datasets: induction pairs, text chunks and the load_dataset registry."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from src.data.dataset import ContrastDataset, TokenDataset
from src.data.induction import make_induction_dataset
from src.data.loading import load_dataset
from src.data.text import make_text_dataset


class CharTokenizer:
    """A stand-in for a Hugging Face tokenizer: one token per character."""

    bos_token_id = 0

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


def fake_model(tokenizer: object = None, d_vocab: int = 64, n_ctx: int = 32) -> SimpleNamespace:
    return SimpleNamespace(cfg=SimpleNamespace(d_vocab=d_vocab, n_ctx=n_ctx), tokenizer=tokenizer)


@pytest.mark.parametrize("seq_length", [31, 30, 4])
def test_induction_layout(seq_length: int) -> None:
    ds = make_induction_dataset(50, seq_length, d_vocab=64, bos_token_id=0, seed=1)
    half, start = seq_length // 2, 1 + seq_length % 2  # start of the first copy
    clean, corrupted = ds.clean_tokens, ds.corrupted_tokens
    assert clean.shape == corrupted.shape == (50, seq_length) and clean.dtype == torch.long
    assert ds.answer_tokens.shape == ds.wrong_tokens.shape == (50,) and len(ds) == 50
    assert (clean[:, 0] == 0).all() and (clean[:, 1:] != 0).all()  # BOS only at 0
    first, second = clean[:, start : start + half], clean[:, start + half :]
    assert torch.equal(second, first[:, :-1])  # the repeat ...
    assert torch.equal(ds.answer_tokens, first[:, -1])  # ... predicts the answer next
    # Corrupted differs only where the answer was, and induction now predicts `wrong`.
    diff = (clean != corrupted).nonzero()
    assert torch.equal(diff[:, 0], torch.arange(50)) and (diff[:, 1] == start + half - 1).all()
    assert torch.equal(corrupted[:, start + half - 1], ds.wrong_tokens)
    assert (ds.wrong_tokens != ds.answer_tokens).all()
    # Every token of a prompt is distinct, so the induction answer is unambiguous.
    for row in torch.cat([clean[:, 1 : start + half], ds.wrong_tokens[:, None]], dim=1):
        assert len(set(row.tolist())) == len(row)


def test_induction_previous_corruption(toy_model) -> None:
    """The token before the answer's first occurrence is replaced: the same clean prompts,
    and the toy model can no longer complete them (its logit difference collapses)."""
    answer = make_induction_dataset(40, 31, d_vocab=64, bos_token_id=0, seed=1)
    previous = make_induction_dataset(40, 31, 64, 0, seed=1, corruption="previous")
    assert torch.equal(previous.clean_tokens, answer.clean_tokens)
    assert torch.equal(previous.wrong_tokens, answer.wrong_tokens)
    diff = (previous.clean_tokens != previous.corrupted_tokens).nonzero()
    assert (diff[:, 1] == 2 + 15 - 2).all() and len(diff) == 40  # A[h-2] after BOS, filler
    with torch.no_grad():
        logits = toy_model(previous.corrupted_tokens)[:, -1]
    answers = logits.gather(1, previous.answer_tokens[:, None])
    wrongs = logits.gather(1, previous.wrong_tokens[:, None])
    assert (answers - wrongs).mean().abs() < 2.0  # clean is about +11.5
    with pytest.raises(ValueError, match="corruption must be one of answer, previous; got 'x'"):
        make_induction_dataset(4, 31, 64, 0, corruption="x")


def test_induction_is_deterministic() -> None:
    def make(seed: int) -> ContrastDataset:
        return make_induction_dataset(20, 31, 64, 0, seed)

    before = torch.get_rng_state()
    a, b, c = make(0), make(0), make(1)
    assert torch.equal(torch.get_rng_state(), before)  # global RNG untouched
    assert torch.equal(a.clean_tokens, b.clean_tokens) and torch.equal(
        a.wrong_tokens, b.wrong_tokens
    )
    assert not torch.equal(a.clean_tokens, c.clean_tokens)


def test_induction_large_vocab_bos_last() -> None:
    ds = make_induction_dataset(8, 50, d_vocab=50257, bos_token_id=50256)
    body = ds.clean_tokens[:, 1:]
    assert (body != 50256).all() and body.max() < 50257 and body.min() >= 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"seq_length": 3}, "seq_length must be >= 4"),
        ({"d_vocab": 10}, "d_vocab 10 is too small"),
        ({"n_samples": 0}, "n_samples must be > 0"),
        ({"bos_token_id": 64}, "outside the vocabulary"),
    ],
)
def test_induction_errors(kwargs: dict, match: str) -> None:
    args = {"n_samples": 4, "seq_length": 31, "d_vocab": 64, "bos_token_id": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        make_induction_dataset(**args)


def test_contrast_dataset_checks_and_slices() -> None:
    tokens = torch.zeros(4, 6, dtype=torch.long)
    answers = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"clean_tokens \(4, 6\) and corrupted_tokens \(4, 5\)"):
        ContrastDataset("x", tokens, tokens[:, :5], answers, answers)
    with pytest.raises(ValueError, match=r"wrong_tokens \(3,\) must be \[n\] = \(4,\)"):
        ContrastDataset("x", tokens, tokens, answers, answers[:3])
    ds = ContrastDataset("x", tokens, tokens, answers, answers)
    part = ds[1:3].to("cpu")
    assert len(part) == 2 and part.seq_length == 6 and part.answer_tokens.shape == (2,)


def test_text_dataset(tmp_path: Path) -> None:
    """Packed rows in file order: BOS, then the text; a line is a document, and documents
    in a row are separated by BOS (src/data/text.py; test_text_sources.py for more)."""
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 10)  # one document of 100 characters
    ds = make_text_dataset(path, CharTokenizer(), 5, 11, bos_token_id=0)
    assert isinstance(ds, TokenDataset) and ds.tokens.shape == (5, 11)
    assert ds.name == "text:corpus" and (ds.tokens[:, 0] == 0).all()
    assert ds.tokens[:, 1:].tolist() == [[ord(c) for c in "abcdefghij"]] * 5
    no_bos = make_text_dataset(path, CharTokenizer(), 10, 10)
    assert no_bos.tokens.shape == (10, 10) and no_bos.tokens[0, 0] == ord("a")
    with pytest.raises(ValueError, match="has 10 rows of 10 tokens; 11 rows need 110 tokens"):
        make_text_dataset(path, CharTokenizer(), 11, 10)
    with pytest.raises(ValueError, match="nope.txt': no such file or directory"):
        make_text_dataset(tmp_path / "nope.txt", CharTokenizer(), 1, 10)
    path.write_text("abc\n\ndefgh\n")  # an empty line is an empty document: nothing
    two = make_text_dataset(path, CharTokenizer(), 1, 10, bos_token_id=0)
    assert two.tokens.tolist() == [[0, *map(ord, "abc"), 0, *map(ord, "defgh")]]


def test_load_dataset_uses_the_models_vocab_and_bos(tmp_path: Path) -> None:
    tokenizer = CharTokenizer()
    tokenizer.bos_token_id = 7
    ds = load_dataset("induction", 4, 20, model=fake_model(tokenizer, d_vocab=30))
    assert (ds.clean_tokens[:, 0] == 7).all() and ds.clean_tokens.max() < 30
    path = tmp_path / "corpus.txt"
    path.write_text("x" * 100)
    text = load_dataset("text", 3, 10, model=fake_model(tokenizer), path=path)
    assert text.tokens.shape == (3, 10) and (text.tokens[:, 0] == 7).all()


def test_load_dataset_toy_bos() -> None:
    from src.models.toy import TOY_BOS_TOKEN_ID

    ds = load_dataset("induction", 4, 31, model=fake_model())
    assert (ds.clean_tokens[:, 0] == TOY_BOS_TOKEN_ID).all()


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        (
            "sequences",
            {"model": fake_model()},
            "unknown dataset 'sequences'; known: induction, text",
        ),
        ("induction", {}, "needs a model"),
        ("induction", {"model": fake_model(n_ctx=16)}, "seq_length 31 exceeds .* n_ctx=16"),
        ("text", {"model": fake_model(CharTokenizer())}, "needs a path"),
        ("text", {"model": fake_model(), "path": "x.txt"}, "needs a model with a tokenizer"),
    ],
)
def test_load_dataset_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_dataset(name, 4, 31, **kwargs)

"""IOI dataset: layout, corruption, template groups and errors, with a word-level tokenizer."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from src.data.ioi import (
    ABBA_TEMPLATES,
    BABA_TEMPLATES,
    NAMES,
    ioi_prompts,
    ioi_template_lengths,
    ioi_vocabulary,
    make_ioi_dataset,
    word_level_tokenizer,
)
from src.data.loading import load_dataset


@pytest.fixture(scope="module")
def tokenizer():
    return word_level_tokenizer(ioi_vocabulary())


def name_positions(tokens: torch.Tensor, name_ids: torch.Tensor) -> torch.Tensor:
    """[n, 3] positions of the name tokens of each row (IO, S1, S2 in prompt order)."""
    mask = torch.isin(tokens, name_ids)
    assert (mask.sum(1) == 3).all()
    return mask.nonzero()[:, 1].view(-1, 3)


def test_word_level_tokenizer(tokenizer) -> None:
    assert tokenizer.bos_token_id == 0 and tokenizer.unk_token_id == 1
    ids = tokenizer.encode("Then, Mary gave a drink to", add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(ids) == ["Then", ",", "Mary", "gave", "a", "drink", "to"]
    assert tokenizer.encode(" Mary", add_special_tokens=False) == ids[2:3]
    assert tokenizer.encode("Zelda", add_special_tokens=False) == [1]


def test_clean_prompts_are_ioi(tokenizer) -> None:
    ds = make_ioi_dataset(tokenizer, 60, seed=1)
    n, length = ds.clean_tokens.shape
    assert (n, length) == (60, 16) and ds.corrupted_tokens.shape == (60, 16)
    assert ds.name == "ioi:abc" and ds.answer_tokens.shape == ds.wrong_tokens.shape == (60,)
    assert (ds.clean_tokens[:, 0] == 0).all() and (ds.clean_tokens[:, 1:] != 0).all()
    assert (ds.clean_tokens != 1).all() and (ds.corrupted_tokens != 1).all()  # no <unk>
    to = tokenizer.convert_tokens_to_ids("to")
    assert (ds.clean_tokens[:, -1] == to).all()  # the last position predicts the IO

    name_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(NAMES)))
    pos = name_positions(ds.clean_tokens, name_ids)
    names = ds.clean_tokens.gather(1, pos)
    answer, wrong = ds.answer_tokens[:, None], ds.wrong_tokens[:, None]
    assert ((names == answer).sum(1) == 1).all() and ((names == wrong).sum(1) == 2).all()
    assert (names[:, 2] == ds.wrong_tokens).all()  # the repeated name (S2) is the subject
    io_first = names[:, 0] == ds.answer_tokens  # ABBA; BABA has the subject first
    assert 0 < io_first.sum() < n
    for i in range(3):  # decode: the answer is the name mentioned once, wrong the repeated one
        text = tokenizer.decode(ds.clean_tokens[i, 1:])
        io, s = tokenizer.decode(ds.answer_tokens[i]), tokenizer.decode(ds.wrong_tokens[i])
        assert text.endswith(" to") and text.split().count(io) == 1
        assert text.split().count(s) == 2 and io in NAMES and s in NAMES


def test_abc_corruption_hides_the_names(tokenizer) -> None:
    ds = make_ioi_dataset(tokenizer, 60, seed=2)
    name_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(NAMES)))
    pos = name_positions(ds.clean_tokens, name_ids)
    assert torch.equal(name_positions(ds.corrupted_tokens, name_ids), pos)
    new = ds.corrupted_tokens.gather(1, pos)
    assert all(len(set(row.tolist())) == 3 for row in new)  # three different names ...
    assert not (ds.corrupted_tokens == ds.answer_tokens[:, None]).any()  # ... neither IO
    assert not (ds.corrupted_tokens == ds.wrong_tokens[:, None]).any()  # ... nor S
    same = torch.ones_like(ds.clean_tokens, dtype=torch.bool).scatter(1, pos, False)
    assert torch.equal(ds.clean_tokens[same], ds.corrupted_tokens[same])  # the rest is kept


def test_flip_corruption_repeats_the_io(tokenizer) -> None:
    ds = make_ioi_dataset(tokenizer, 40, seed=3, corruption="flip")
    diff = (ds.clean_tokens != ds.corrupted_tokens).nonzero()
    assert torch.equal(diff[:, 0], torch.arange(40))  # one token per prompt: S2 -> IO
    assert (ds.clean_tokens[diff[:, 0], diff[:, 1]] == ds.wrong_tokens).all()
    assert (ds.corrupted_tokens[diff[:, 0], diff[:, 1]] == ds.answer_tokens).all()


def test_tokens_match_the_text_prompts(tokenizer) -> None:
    ds = make_ioi_dataset(tokenizer, 10, seed=4, seq_length=15)
    prompts = ioi_prompts(10, ioi_template_lengths(tokenizer)[15], seed=4)
    for i, p in enumerate(prompts):
        assert ds.clean_tokens[i, 1:].tolist() == tokenizer.encode(p.clean)
        assert ds.corrupted_tokens[i, 1:].tolist() == tokenizer.encode(p.corrupted)
        assert ds.answer_tokens[i] == tokenizer.convert_tokens_to_ids(p.io)
        assert ds.wrong_tokens[i] == tokenizer.convert_tokens_to_ids(p.s)
        assert p.clean.count(p.io) == 1 and p.clean.count(p.s) == 2


def test_seq_length_selects_a_template_group(tokenizer) -> None:
    groups = ioi_template_lengths(tokenizer)
    assert sum(map(len, groups.values())) == len(ABBA_TEMPLATES) + len(BABA_TEMPLATES) == 30
    assert max(groups, key=lambda n: len(groups[n])) == 16  # the default
    for length in groups:
        ds = make_ioi_dataset(tokenizer, 5, seq_length=length)
        assert ds.clean_tokens.shape == (5, length)
    no_bos = make_ioi_dataset(tokenizer, 5, seq_length=15, prepend_bos=False)
    assert no_bos.clean_tokens.shape == (5, 15) and (no_bos.clean_tokens != 0).all()
    with pytest.raises(ValueError, match=r"no IOI template has seq_length 31; lengths: 15 \("):
        make_ioi_dataset(tokenizer, 5, seq_length=31)


def test_deterministic_per_seed(tokenizer) -> None:
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    a, b = make_ioi_dataset(tokenizer, 30, seed=0), make_ioi_dataset(tokenizer, 30, seed=0)
    c = make_ioi_dataset(tokenizer, 30, seed=1)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    for field in ("clean_tokens", "corrupted_tokens", "answer_tokens", "wrong_tokens"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.clean_tokens, c.clean_tokens)


def test_default_words_are_filtered_to_the_tokenizer() -> None:
    kept = ["Mary", "John", "Tom", "James", "Anna"]  # the only names this tokenizer knows
    vocab = [w for w in ioi_vocabulary() if w not in NAMES or w in kept]
    tokenizer = word_level_tokenizer(vocab)
    ds = make_ioi_dataset(tokenizer, 50)
    assert 1 not in ds.clean_tokens and 1 not in ds.corrupted_tokens  # no <unk>
    used = set(ds.answer_tokens.tolist()) | set(ds.wrong_tokens.tolist())
    assert {tokenizer.decode(t) for t in used} == set(kept)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"names": ["Mary", "John", "Mary-Ann"]}, r"'Mary-Ann' is not a single token"),
        ({"names": ["Mary", "John", "Zelda"]}, r"'Zelda' is not a single token"),
        ({"objects": ["drink", "Mary-Ann"]}, r"'Mary-Ann' is not a single token"),
        ({"names": ["Mary", "John", "Tom"]}, r"names needs >= 5 distinct names for 'abc'"),
        ({"names": ["Mary"], "corruption": "flip"}, r"1 names \(need >= 2\)"),
        ({"corruption": "swap"}, r"corruption must be 'abc' or 'flip'"),
        ({"n_samples": 0}, r"n_samples must be > 0"),
        ({"templates": []}, r"templates must not be empty"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    tokenizer = word_level_tokenizer([*ioi_vocabulary(), "Mary-Ann"])
    args = {"n_samples": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        make_ioi_dataset(tokenizer, **args)


def test_needs_a_bos_token_to_prepend(tokenizer) -> None:
    no_bos = SimpleNamespace(
        encode=tokenizer.encode, bos_token_id=None, unk_token_id=tokenizer.unk_token_id
    )
    with pytest.raises(ValueError, match="prepend_bos=True needs a tokenizer with a bos_token"):
        make_ioi_dataset(no_bos, 4)
    assert make_ioi_dataset(no_bos, 4, prepend_bos=False).seq_length == 15


def fake_model(tokenizer: object, d_vocab: int, n_ctx: int = 32) -> SimpleNamespace:
    return SimpleNamespace(cfg=SimpleNamespace(d_vocab=d_vocab, n_ctx=n_ctx), tokenizer=tokenizer)


def test_load_dataset_ioi(tokenizer) -> None:
    model = fake_model(tokenizer, d_vocab=len(tokenizer))
    ds = load_dataset("ioi", 8, 16, seed=5, model=model)
    assert ds.clean_tokens.shape == (8, 16) and (ds.clean_tokens[:, 0] == 0).all()
    assert torch.equal(ds.clean_tokens, make_ioi_dataset(tokenizer, 8, 5).clean_tokens)
    with pytest.raises(ValueError, match="no IOI template has seq_length 17; lengths: 15"):
        load_dataset("ioi", 8, 17, model=model)
    with pytest.raises(ValueError, match="dataset 'ioi' needs a model with a tokenizer"):
        load_dataset("ioi", 8, 16, model=fake_model(None, d_vocab=64))
    with pytest.raises(ValueError, match="exceed the model's d_vocab=20"):
        load_dataset("ioi", 8, 16, model=fake_model(tokenizer, d_vocab=20))


def test_a_tokenizer_without_single_token_names_says_what_ioi_needs() -> None:
    """A tokenizer that knows one name (as a SentencePiece or character tokenizer might):
    the error names the requirement, a GPT-2-style BPE with single-token names."""
    vocab = [w for w in ioi_vocabulary() if w not in NAMES or w == "Mary"]
    with pytest.raises(ValueError, match=r"1 names .*GPT-2-style BPE tokenizer in which each name"):
        make_ioi_dataset(word_level_tokenizer(vocab), 4)
    with pytest.raises(ValueError, match=r"'Zelda' is not a single token.*GPT-2-style BPE"):
        make_ioi_dataset(word_level_tokenizer(ioi_vocabulary()), 4, names=["Mary", "Zelda"])

"""Indirect object identification (IOI, Wang et al. 2022, "Interpretability in the Wild").

    clean      [BOS] When Mary and John went to the store, John gave a drink to  -> " Mary"
    corrupted  [BOS] When Alan and Kate went to the store, Lisa gave a drink to  (ABC)

The answer is the indirect object (IO, " Mary"), the wrong token the subject (S, " John").
Templates come in the paper's two orders, ABBA (IO first) and BABA (S first), with the
name slots ``{IO}``, ``{S1}`` (first subject mention) and ``{S2}`` (the repeat). Prompts
end on " to", so the last position is the one that predicts the IO; there is no padding.

Corruption (``corruption=``):

- ``"abc"`` (default, the paper's): IO, S1 and S2 become three new distinct names, none of
  them the IO or S, so the prompt no longer says who the IO is; the clean logit difference
  drops to about zero rather than flipping sign. The answer/wrong tokens stay the clean ones.
- ``"flip"``: S2 becomes the IO ("..., Mary gave a drink to"), so the repeated name and the
  IOI answer is now S: the logit difference flips sign and the pair differs in one token.

Every name, place and object must be a single token (with its leading space) for the
tokenizer: then a template's filled prompts all have one token length. So IOI needs a
GPT-2-style byte-level BPE, whose tokens carry their leading space (" Mary" is one token):
GPT-2's, Pythia's, and the tiny test checkpoints' (``src.models.checkpoints``). Tokenizers
that split common names (or encode the space apart, as SentencePiece models such as Gemma's
and Llama's may) leave too few names, or prompts of different lengths: a ValueError says so. Templates of
different lengths are not mixed in one dataset: ``seq_length`` picks the group of that
length (see ``ioi_template_lengths``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from src.data.dataset import ContrastDataset

Corruption = Literal["abc", "flip"]
TOKENIZER_NEEDS = (
    "IOI needs a GPT-2-style BPE tokenizer in which each name, place and object with its "
    "leading space is one token (GPT-2's, Pythia's; see src/data/ioi.py)"
)

# BABA forms (subject first); the ABBA forms swap {S1} and {IO}. Prompts end before the IO.
_BABA_TEMPLATES = (
    "When {S1} and {IO} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "Then, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "Then, {S1} and {IO} had a lot of fun at the {PLACE}. {S2} gave a {OBJECT} to",
    "Then, {S1} and {IO} were working at the {PLACE}. {S2} decided to give a {OBJECT} to",
    "Then, {S1} and {IO} were thinking about going to the {PLACE}. {S2} wanted to give a "
    "{OBJECT} to",
    "Then, {S1} and {IO} had a long argument, and afterwards {S2} said to",
    "Then, {S1} and {IO} had a long argument. Afterwards {S2} said to",
    "After {S1} and {IO} went to the {PLACE}, {S2} gave a {OBJECT} to",
    "After the lunch, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "Afterwards, {S1} and {IO} went to the {PLACE}. {S2} gave a {OBJECT} to",
    "When {S1} and {IO} got a {OBJECT} at the {PLACE}, {S2} decided to give it to",
    "When {S1} and {IO} got a {OBJECT} at the {PLACE}, {S2} decided to give the {OBJECT} to",
    "While {S1} and {IO} were working at the {PLACE}, {S2} gave a {OBJECT} to",
    "The {PLACE} {S1} and {IO} went to had a {OBJECT}. {S2} gave it to",
    "Friends {S1} and {IO} found a {OBJECT} at the {PLACE}. {S2} gave it to",
)


def _abba(template: str) -> str:
    return template.replace("{S1}", "\0").replace("{IO}", "{S1}").replace("\0", "{IO}")


BABA_TEMPLATES: tuple[str, ...] = _BABA_TEMPLATES
ABBA_TEMPLATES: tuple[str, ...] = tuple(_abba(t) for t in _BABA_TEMPLATES)
TEMPLATES: tuple[str, ...] = ABBA_TEMPLATES + BABA_TEMPLATES

# Common first names that GPT-2 encodes as one token with a leading space (" Mary").
NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Sarah", "Anna", "Paul", "David", "Michael",
    "Kate", "Lisa", "Mark", "Peter", "Robert", "George", "Thomas", "Alan", "Alex", "Andrew",
    "Brian", "Daniel", "Eric", "Frank", "Jack", "Jason", "Kevin", "Laura", "Martin", "Rachel",
    "Richard", "Ryan", "Scott", "Steven", "William", "Emily", "Adam", "Amy", "Henry", "Jessica",
)  # fmt: skip
PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
)  # fmt: skip
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
)  # fmt: skip


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI pair as text: the clean and corrupted prompts, the IO and the subject."""

    clean: str
    corrupted: str
    io: str
    s: str


def ioi_prompts(
    n_samples: int,
    templates: Sequence[str],
    names: Sequence[str] = NAMES,
    places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS,
    *,
    corruption: Corruption = "abc",
    seed: int = 0,
) -> list[IOIPrompt]:
    """``n_samples`` random IOI pairs (text only): a uniform template, two distinct names
    (IO and S), a place and an object each. Deterministic for a seed."""
    if n_samples <= 0:
        raise ValueError(f"n_samples must be > 0, got {n_samples}")
    if corruption not in ("abc", "flip"):
        raise ValueError(f"corruption must be 'abc' or 'flip', got {corruption!r}")
    need = 5 if corruption == "abc" else 2
    if len(set(names)) < need:
        raise ValueError(f"names needs >= {need} distinct names for {corruption!r}")
    if not templates or not places or not objects:
        raise ValueError("templates, places and objects must not be empty")
    names = sorted(set(names))  # a set's order would make the draw depend on hashing
    rng = random.Random(seed)
    prompts = []
    for _ in range(n_samples):
        template, place, obj = rng.choice(templates), rng.choice(places), rng.choice(objects)
        io, s, *others = rng.sample(names, need)
        fill = {"PLACE": place, "OBJECT": obj}
        clean = template.format(IO=io, S1=s, S2=s, **fill)
        if corruption == "abc":
            corrupted = template.format(IO=others[0], S1=others[1], S2=others[2], **fill)
        else:
            corrupted = template.format(IO=io, S1=s, S2=io, **fill)
        prompts.append(IOIPrompt(clean, corrupted, io, s))
    return prompts


def single_token_words(tokenizer: Any, words: Iterable[str], *, strict: bool) -> list[str]:
    """The words that ``tokenizer`` encodes, with a leading space, as one known token.

    ``strict=True`` raises ValueError naming the first word that is not; otherwise those
    words are dropped.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    kept = []
    for word in words:
        ids = tokenizer.encode(" " + word, add_special_tokens=False)
        if len(ids) == 1 and ids[0] != unk:
            kept.append(word)
        elif strict:
            raise ValueError(
                f"{word!r} is not a single token for this tokenizer: {ids}; {TOKENIZER_NEEDS}"
            )
    return kept


def ioi_template_lengths(
    tokenizer: Any,
    templates: Sequence[str] = TEMPLATES,
    *,
    fill: tuple[str, str, str, str] = ("Mary", "John", "store", "drink"),
    prepend_bos: bool = True,
) -> dict[int, list[str]]:
    """Templates grouped by their prompts' token length (with BOS when ``prepend_bos``).

    The length is that of the template filled with ``fill`` = (IO, S, place, object); it
    is every prompt's length when all names, places and objects are single tokens.
    """
    io, s, place, obj = fill
    groups: dict[int, list[str]] = {}
    for template in templates:
        text = template.format(IO=io, S1=s, S2=s, PLACE=place, OBJECT=obj)
        n = len(tokenizer.encode(text, add_special_tokens=False)) + prepend_bos
        groups.setdefault(n, []).append(template)
    return dict(sorted(groups.items()))


def make_ioi_dataset(
    tokenizer: Any,
    n_samples: int,
    seed: int = 0,
    *,
    seq_length: int | None = None,
    templates: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    places: Sequence[str] | None = None,
    objects: Sequence[str] | None = None,
    corruption: Corruption = "abc",
    prepend_bos: bool = True,
) -> ContrastDataset:
    """``n_samples`` IOI pairs tokenized by ``tokenizer`` (a Hugging Face tokenizer).

    All prompts have one length: the templates (default ``TEMPLATES``, both orders) are
    grouped by token length and only the group of length ``seq_length`` (BOS included) is
    used; ``seq_length=None`` takes the largest group. A ``seq_length`` that no template
    has raises ValueError listing the lengths there are. The default names, places and
    objects are filtered to the tokenizer's single tokens; explicit lists must be single
    tokens throughout (else ValueError). Deterministic for a seed (own ``random.Random``).
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if prepend_bos and bos is None:
        raise ValueError("prepend_bos=True needs a tokenizer with a bos_token_id")
    names, places, objects = (
        single_token_words(tokenizer, default if given is None else given, strict=given is not None)
        for given, default in ((names, NAMES), (places, PLACES), (objects, OBJECTS))
    )
    if len(names) < 2 or not places or not objects:
        raise ValueError(
            f"too few single-token words for this tokenizer: {len(names)} names (need >= 2), "
            f"{len(places)} places, {len(objects)} objects (need >= 1): {TOKENIZER_NEEDS}"
        )
    groups = ioi_template_lengths(
        tokenizer,
        TEMPLATES if templates is None else templates,
        fill=(names[0], names[1], places[0], objects[0]),
        prepend_bos=prepend_bos,
    )
    if not groups:
        raise ValueError("templates must not be empty")
    if seq_length is None:
        seq_length = max(groups, key=lambda n: len(groups[n]))
    if seq_length not in groups:
        sizes = ", ".join(f"{n} ({len(t)} templates)" for n, t in groups.items())
        raise ValueError(f"no IOI template has seq_length {seq_length}; lengths: {sizes}")

    prompts = ioi_prompts(
        n_samples, groups[seq_length], names, places, objects, corruption=corruption, seed=seed
    )
    clean = _encode(tokenizer, [p.clean for p in prompts], bos if prepend_bos else None)
    corrupted = _encode(tokenizer, [p.corrupted for p in prompts], bos if prepend_bos else None)
    answer = _encode(tokenizer, [" " + p.io for p in prompts], None)[:, 0]
    wrong = _encode(tokenizer, [" " + p.s for p in prompts], None)[:, 0]
    if not ((clean == answer[:, None]).any(1) & (clean == wrong[:, None]).any(1)).all():
        raise ValueError(
            f"the tokenizer encodes names differently inside the prompts: {TOKENIZER_NEEDS}"
        )
    return ContrastDataset(f"ioi:{corruption}", clean, corrupted, answer, wrong)


def _encode(tokenizer: Any, texts: list[str], bos: int | None) -> torch.Tensor:
    """[n, seq] long tokens of ``texts`` (BOS first unless None); raises on ragged lengths."""
    rows = [
        [bos] * (bos is not None) + tokenizer.encode(t, add_special_tokens=False) for t in texts
    ]
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ValueError(
            f"IOI prompts tokenize to different lengths {sorted(lengths)}: {TOKENIZER_NEEDS}"
        )
    return torch.tensor(rows, dtype=torch.long)


def word_level_tokenizer(words: Iterable[str], bos_token: str = "<|endoftext|>") -> Any:
    """A Hugging Face tokenizer with one token per word or punctuation mark of ``words``
    (split on whitespace and punctuation), plus ``bos_token`` (also EOS) and ``<unk>``.

    Offline stand-in for a real tokenizer, e.g. for tests or for training a toy IOI model
    on ``word_level_tokenizer(ioi_vocabulary())``. Ids: BOS 0, ``<unk>`` 1, then words
    in sorted order.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    pieces = sorted({p for w in words for p, _ in Whitespace().pre_tokenize_str(w)})
    vocab = {tok: i for i, tok in enumerate([bos_token, "<unk>", *pieces])}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos_token, eos_token=bos_token, unk_token="<unk>"
    )


def ioi_vocabulary(
    templates: Sequence[str] = TEMPLATES,
    names: Sequence[str] = NAMES,
    places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS,
) -> list[str]:
    """Every word and punctuation mark the IOI prompts can contain (for a word-level
    tokenizer)."""
    slots = {"IO": "", "S1": "", "S2": "", "PLACE": "", "OBJECT": ""}
    return [*(t.format(**slots) for t in templates), *names, *places, *objects]

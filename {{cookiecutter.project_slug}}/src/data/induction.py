"""Induction contrast pairs: a random chunk of tokens, then its repeat.

Layout of one prompt of ``seq_length`` tokens, with ``half = seq_length // 2``::

    clean      [BOS] (f) A[0] ... A[h-3] A[h-2] A[h-1]  A[0] ... A[h-2]  -> answer A[h-1]
    "answer"   [BOS] (f) A[0] ... A[h-3] A[h-2] W       A[0] ... A[h-2]  -> wrong  W
    "previous" [BOS] (f) A[0] ... A[h-3] W      A[h-1]  A[0] ... A[h-2]

``f`` is one random filler token, present only when ``seq_length`` is odd. The prompts
end on the repeat of A[h-2]; an induction head finds its first occurrence (its key says
"my previous token was A[h-2]", written there by a previous-token head) and copies the
token it attends to. Each corruption changes one token:

- ``"answer"`` (default) replaces what is copied: the corrupted prompt predicts W, so the
  clean and corrupted logit differences have opposite signs. Patching finds the copying
  (the induction heads' values and outputs).
- ``"previous"`` replaces the token before the answer, so no key matches and nothing is
  copied (logit difference near 0). Patching finds the key path: the previous-token head
  in layer 0 and the induction heads' keys (K-composition).

Tokens within a prompt (A, W and filler) are distinct and never the BOS token.

``shared_answer=True``: every prompt has the same answer A[h-1] and the same W (the two
smallest non-BOS ids), the rest random: contrast sets whose difference of means carries the
answer, for steering (``src.analysis.steering``).
"""

from __future__ import annotations

import torch

from src.data.dataset import ContrastDataset

CORRUPTIONS = ("answer", "previous")


def make_induction_dataset(
    n_samples: int,
    seq_length: int,
    d_vocab: int,
    bos_token_id: int,
    seed: int = 0,
    corruption: str = "answer",
    shared_answer: bool = False,
) -> ContrastDataset:
    """``n_samples`` induction pairs of ``seq_length`` tokens over ids ``[0, d_vocab)``,
    corrupted as ``corruption`` says (see the module docstring).

    Deterministic for a seed (uses its own ``torch.Generator``, not the global RNG).
    ``shared_answer``: one answer and one wrong token for all prompts (module docstring).
    """
    if corruption not in CORRUPTIONS:
        raise ValueError(f"corruption must be one of {', '.join(CORRUPTIONS)}; got {corruption!r}")
    if n_samples <= 0:
        raise ValueError(f"n_samples must be > 0, got {n_samples}")
    if seq_length < 4:
        raise ValueError(f"seq_length must be >= 4 for an induction prompt, got {seq_length}")
    if not 0 <= bos_token_id < d_vocab:
        raise ValueError(f"bos_token_id {bos_token_id} is outside the vocabulary [0, {d_vocab})")
    half, n_filler = seq_length // 2, seq_length % 2
    n_distinct = half + 1 + n_filler  # A, W and the filler
    if d_vocab - 1 < n_distinct:
        raise ValueError(f"d_vocab {d_vocab} is too small for seq_length {seq_length}")

    generator = torch.Generator().manual_seed(seed)
    # Distinct non-BOS tokens per prompt: the top-k of uniform noise over the allowed ids
    # is a uniform sample without replacement (in row blocks, to bound memory); skip BOS
    # (and the shared answer and wrong tokens).
    shared = [t for t in range(d_vocab) if t != bos_token_id][:2] if shared_answer else []
    reserved = sorted([bos_token_id, *shared])
    n_free = d_vocab - len(reserved)
    n_pick = n_distinct - len(shared)
    rows = max(1, 2**22 // d_vocab)
    picks = torch.cat(
        [
            torch.rand(min(rows, n_samples - i), n_free, generator=generator)
            .topk(n_pick, dim=1)
            .indices
            for i in range(0, n_samples, rows)
        ]
    )
    for token in reserved:
        picks = picks + (picks >= token).long()
    if shared_answer:
        answer, wrong_token = (torch.full((n_samples, 1), t, dtype=torch.long) for t in shared)
        picks = torch.cat([picks[:, : half - 1], answer, wrong_token, picks[:, half - 1 :]], 1)
    chunk, wrong, filler = picks[:, :half], picks[:, half], picks[:, half + 1 :]

    bos = torch.full((n_samples, 1), bos_token_id, dtype=torch.long)
    clean = torch.cat([bos, filler, chunk, chunk[:, :-1]], dim=1)
    corrupted = clean.clone()
    answer_position = 1 + n_filler + half - 1
    corrupted[:, answer_position - (corruption == "previous")] = wrong
    return ContrastDataset(
        name="induction",
        clean_tokens=clean,
        corrupted_tokens=corrupted,
        answer_tokens=chunk[:, -1].clone(),
        wrong_tokens=wrong.clone(),
    )

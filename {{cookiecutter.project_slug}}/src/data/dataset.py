"""Dataset containers: contrast pairs for patching, plain token batches for everything else."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ContrastDataset:
    """Clean/corrupted prompt pairs with the token each should (answer) or should not
    (wrong) produce at the final position. The corrupted prompt makes ``wrong`` the
    expected completion, so ``logit_diff`` flips sign between clean and corrupted.

    clean_tokens, corrupted_tokens: [n, seq] long; answer_tokens, wrong_tokens: [n] long.
    """

    name: str
    clean_tokens: Tensor
    corrupted_tokens: Tensor
    answer_tokens: Tensor
    wrong_tokens: Tensor

    def __post_init__(self) -> None:
        clean, corrupted = self.clean_tokens, self.corrupted_tokens
        if clean.ndim != 2 or clean.shape != corrupted.shape:
            raise ValueError(
                f"clean_tokens {tuple(clean.shape)} and corrupted_tokens "
                f"{tuple(corrupted.shape)} must both be [n, seq]"
            )
        n = clean.shape[0]
        for label, t in (
            ("answer_tokens", self.answer_tokens),
            ("wrong_tokens", self.wrong_tokens),
        ):
            if t.shape != (n,):
                raise ValueError(f"{label} {tuple(t.shape)} must be [n] = ({n},)")
        for t in (clean, corrupted, self.answer_tokens, self.wrong_tokens):
            if t.dtype != torch.long:
                raise ValueError(f"token tensors must be torch.long, got {t.dtype}")

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    def __getitem__(self, index: slice) -> ContrastDataset:
        """A sub-dataset (e.g. a batch): ``dataset[i : i + batch_size]``."""
        return self._map(lambda t: t[index])

    @property
    def seq_length(self) -> int:
        return self.clean_tokens.shape[1]

    def to(self, device: str | torch.device) -> ContrastDataset:
        return self._map(lambda t: t.to(device))

    def _map(self, fn) -> ContrastDataset:
        fields = ("clean_tokens", "corrupted_tokens", "answer_tokens", "wrong_tokens")
        return dataclasses.replace(self, **{f: fn(getattr(self, f)) for f in fields})


@dataclass(frozen=True)
class TokenDataset:
    """Plain token sequences ([n, seq] long) with no corruption, e.g. chunks of a text
    corpus; the answer at each position is the next token (language-model loss)."""

    name: str
    tokens: Tensor

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2 or self.tokens.dtype != torch.long:
            raise ValueError(
                f"tokens must be a [n, seq] long tensor, got {tuple(self.tokens.shape)} "
                f"{self.tokens.dtype}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: slice) -> TokenDataset:
        return dataclasses.replace(self, tokens=self.tokens[index])

    @property
    def seq_length(self) -> int:
        return self.tokens.shape[1]

    def to(self, device: str | torch.device) -> TokenDataset:
        return dataclasses.replace(self, tokens=self.tokens.to(device))


def batches(dataset: ContrastDataset | TokenDataset, batch_size: int) -> list:
    """The dataset in consecutive slices of at most ``batch_size`` prompts."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    return [dataset[i : i + batch_size] for i in range(0, len(dataset), batch_size)]

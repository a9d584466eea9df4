"""Direct logit attribution (DLA): the final-position logit difference split by component.

``direct_logit_attribution`` splits the logit difference (answer minus wrong token) into each
component's direct path to the logits, with the final norm's scale frozen at its cached
value (as TransformerLens's ``ActivationCache.apply_ln_to_stack``), which makes the split
linear and exact. The same holds for the other per-token scales some models apply: Gemma-2's
post-attention norm (``ln1_post``, frozen to split its attention output into heads) and its
final logit softcap (``cap * tanh(u / cap)``, frozen as the factor ``tanh(u / cap) / (u / cap)``
of each token's logit), so the split is exact there too, as a linearisation at the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from src.analysis.attribution import run_capturing
from src.analysis.circuit_graph import head_outputs, output_bias
from src.analysis.norms import final_norm_linear
from src.analysis.sweep import check_tokens
from src.models.hooks import (
    LN_FINAL_SCALE,
    UNEMBED_OUT,
    embedding_hooks,
    hook_name,
    post_norm,
)

DLA_UNITS = ("head", "component")


def heads_grid(labels: Sequence[str], values: Sequence[float] | Tensor) -> Tensor:
    """The per-head terms (labels ``a{layer}.h{head}``) as ``[n_layers, n_heads]`` (NaN for
    a head without a term); ValueError when there is none."""
    found = [
        (re.fullmatch(r"a(\d+)\.h(\d+)", label), value)
        for label, value in zip(labels, values, strict=True)
    ]
    found = [(int(m[1]), int(m[2]), value) for m, value in found if m]
    if not found:
        raise ValueError("by_head needs a result of direct_logit_attribution(by='head')")
    grid = torch.full((max(f[0] for f in found) + 1, max(f[1] for f in found) + 1), torch.nan)
    for layer, head, value in found:
        grid[layer, head] = value
    return grid


@dataclass
class DLAResult:
    """Direct logit attribution of the final-position logit difference.

    ``values[i]`` (mean over prompts) and ``per_prompt[i]`` ([batch]) belong to ``labels[i]``;
    ``sum(values) + remainder == logit_diff`` (and per prompt with the ``_per_prompt`` fields).
    """

    labels: list[str]
    values: Tensor
    per_prompt: Tensor
    remainder: float
    logit_diff: float
    remainder_per_prompt: Tensor
    logit_diff_per_prompt: Tensor

    def by_head(self) -> Tensor:
        """The per-head terms (labels ``a{layer}.h{head}``) as ``[n_layers, n_heads]``."""
        return heads_grid(self.labels, self.values)

    @staticmethod
    def join(parts: Sequence[DLAResult]) -> DLAResult:
        """The results of several batches of prompts as one (means over all prompts)."""
        per_prompt = torch.cat([p.per_prompt for p in parts], dim=-1)
        remainder = torch.cat([p.remainder_per_prompt for p in parts])
        logit_diff = torch.cat([p.logit_diff_per_prompt for p in parts])
        return DLAResult(
            labels=parts[0].labels,
            values=per_prompt.mean(-1),
            per_prompt=per_prompt,
            remainder=remainder.mean().item(),
            logit_diff=logit_diff.mean().item(),
            remainder_per_prompt=remainder,
            logit_diff_per_prompt=logit_diff,
        )


def _as_batch_tokens(name: str, tokens: Tensor | int, batch: int, d_vocab: int) -> Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 0:
        tokens = tokens.expand(batch)
    if tokens.shape != (batch,) or tokens.dtype.is_floating_point:
        raise ValueError(f"{name} must be integers of shape [{batch}], got {tuple(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= d_vocab:
        raise ValueError(f"{name} must be token ids in [0, {d_vocab})")
    return tokens


def direct_logit_attribution(
    model: torch.nn.Module,
    tokens: Tensor,
    answer_tokens: Tensor | int,
    wrong_tokens: Tensor | int,
    *,
    by: str = "head",
) -> DLAResult:
    """Each component's direct contribution to the final-position logit difference.

    The final residual stream is a sum of component outputs; with the final norm's scale
    frozen at its cached value, ``logit[answer] - logit[wrong]`` is linear in it, and each
    component contributes ``(centre(c) / scale * w_ln) . (W_U[:, answer] - W_U[:, wrong])``
    (what ``ActivationCache.apply_ln_to_stack`` + ``logit_attrs`` compute on a model with
    the norm's weight folded into ``W_U``). On a model with a final logit softcap (Gemma-2)
    each token's logit is its pre-cap logit ``u`` times ``tanh(u / cap) / (u / cap)``, that
    factor frozen at its value in the run: a linearisation (the terms of a component do not
    say what removing it would do to the capped logits), exact for the run. Terms, in order:

    - ``by="head"``: ``embed``, ``pos_embed`` (if positions are added to the residual
      stream; not on rotary models), then per layer each head ``a{layer}.h{head}`` (its
      ``z @ W_O``, through the post-attention norm at its cached scale where the block has
      one, as Gemma-2's), the output bias ``a{layer}.bias`` (``b_O``, zero without one) and
      the MLP ``m{layer}`` (if any).
    - ``by="component"``: ``embed``, ``pos_embed``, ``attn_0``, ``mlp_0``, ``attn_1``, ...
      (``hook_attn_out`` / ``hook_mlp_out``: the normed outputs where a block has post-norms).

    ``remainder = logit_diff - sum(terms)`` per prompt, so the total is exact. It holds what
    no component writes: the final norm's bias along the answer direction,
    ``b_ln . (W_U[:, answer] - W_U[:, wrong])``, and ``b_U[answer] - b_U[wrong]``, plus
    float rounding (~1e-6) and any part of the residual stream the terms miss (none on
    standard GPT-2-style blocks). On the toy model it is 0.05 logits on average (at most 0.17)
    of an 11.5 logit difference, about half ``b_ln`` and half ``b_U``. The final position is
    the last one of every prompt (no padding). Values are float32 on the CPU.
    """
    if by not in DLA_UNITS:
        raise ValueError(f"by must be one of {DLA_UNITS}, got {by!r}")
    check_tokens("tokens", tokens)
    batch, d_vocab = tokens.shape[0], model.cfg.d_vocab
    device = next(model.parameters()).device
    answer = _as_batch_tokens("answer_tokens", answer_tokens, batch, d_vocab).to(device)
    wrong = _as_batch_tokens("wrong_tokens", wrong_tokens, batch, d_vocab).to(device)
    names, scale_name = _hook_names(model, by)
    with torch.no_grad():
        logits, acts, _ = run_capturing(model, tokens.to(device), names)
    final = {name: act[:, -1].double() for name, act in acts.items()}  # [batch, ...]
    labels, outputs = _direct_outputs(model, final, by)
    norm = final_norm_linear(model, final[scale_name]) if scale_name else (lambda x: x)
    final_logits = logits[:, -1].detach().double()
    idx = torch.arange(batch, device=final_logits.device)
    cap_answer, cap_wrong = _softcap_factors(model, final, idx, answer, wrong)
    w_u = model.W_U.detach().double()
    direction = (cap_answer[:, None] * w_u[:, answer].T) - (cap_wrong[:, None] * w_u[:, wrong].T)
    terms = torch.stack([(norm(out) * direction).sum(-1) for out in outputs])  # [n, batch]
    real = final_logits[idx, answer] - final_logits[idx, wrong]
    remainder = real - terms.sum(0)
    return DLAResult(
        labels=labels,
        values=terms.mean(1).float().cpu(),
        per_prompt=terms.float().cpu(),
        remainder=remainder.mean().item(),
        logit_diff=real.mean().item(),
        remainder_per_prompt=remainder.float().cpu(),
        logit_diff_per_prompt=real.float().cpu(),
    )


def _softcap(model: torch.nn.Module) -> float | None:
    """The final logit softcap (``cfg.output_logits_soft_cap``), None where there is none."""
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return float(cap) if cap is not None and cap > 0 else None


def _softcap_factors(
    model: torch.nn.Module, final: dict[str, Tensor], idx: Tensor, answer: Tensor, wrong: Tensor
) -> tuple[Tensor, Tensor]:
    """Per prompt, the factor ``tanh(u / cap) / (u / cap)`` that the softcap multiplies the
    answer's and the wrong token's pre-cap logit ``u`` by (1 without a softcap)."""
    cap = _softcap(model)
    if cap is None:
        ones = torch.ones(len(idx), dtype=torch.float64, device=idx.device)
        return ones, ones
    pre_cap = final[UNEMBED_OUT]

    def factor(u: Tensor) -> Tensor:
        x = u / cap
        small = x.abs() < 1e-6  # tanh(x) / x -> 1 - x^2 / 3
        return torch.where(small, 1 - x * x / 3, torch.tanh(x) / torch.where(small, 1.0, x))

    return factor(pre_cap[idx, answer]), factor(pre_cap[idx, wrong])


def _hook_names(model: torch.nn.Module, by: str) -> tuple[list[str], str | None]:
    """The hooks read (embeddings, per-layer outputs, the norms' scales, the pre-cap logits
    of a softcapped model) and the final norm's scale's name (None if the model has none)."""
    present = set(model.hook_dict)
    scale_name = LN_FINAL_SCALE if LN_FINAL_SCALE in present else None
    points = ["z" if by == "head" else "attn_out"]
    points += [] if getattr(model.cfg, "attn_only", False) else ["mlp_out"]
    names = embedding_hooks(model)
    for layer in range(model.cfg.n_layers):
        names += [hook_name(p, layer) for p in points]
        norm = post_norm(model, "attn_out", layer)
        names += [f"{norm}.hook_scale"] if by == "head" and norm else []
    names += [UNEMBED_OUT] if _softcap(model) is not None else []
    return names + ([scale_name] if scale_name else []), scale_name


def _direct_outputs(
    model: torch.nn.Module, final: dict[str, Tensor], by: str
) -> tuple[list[str], list[Tensor]]:
    """The labels and final-position outputs [batch, d_model] of every term, in order."""
    embeds = embedding_hooks(model)
    labels = [n.removeprefix("hook_") for n in embeds]
    outputs = [final[n] for n in embeds]
    has_mlp = not getattr(model.cfg, "attn_only", False)
    for layer in range(model.cfg.n_layers):
        if by == "head":
            norm = post_norm(model, "attn_out", layer)
            scale = final[f"{norm}.hook_scale"] if norm else None
            heads = head_outputs(model, layer, final[hook_name("z", layer)], scale)
            heads = heads.movedim(1, 0)  # [n_heads, batch, d_model]
            labels += [f"a{layer}.h{h}" for h in range(heads.shape[0])] + [f"a{layer}.bias"]
            b_o = output_bias(model, layer, scale)
            outputs += list(heads) + [torch.zeros_like(heads[0]) + (0.0 if b_o is None else b_o)]
        else:
            labels.append(f"attn_{layer}")
            outputs.append(final[hook_name("attn_out", layer)])
        if has_mlp:
            labels.append(f"m{layer}" if by == "head" else f"mlp_{layer}")
            outputs.append(final[hook_name("mlp_out", layer)])
    return labels, outputs

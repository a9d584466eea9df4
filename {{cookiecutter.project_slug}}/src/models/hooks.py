"""The hook and component vocabulary: every TransformerLens hook name the project uses.

Methods, configs, the activation cache, SAE training and the benchmarks name activations
through this module only, so a hook is spelled once. Two kinds of names:

- hook points (``resid_pre``, ``attn_out``, ``q``, ``pattern``, ...): one activation per
  layer, ``hook_name("attn_out", 3) == "blocks.3.hook_attn_out"``;
- components (``COMPONENTS``): what patching and attribution sweep over. Each patches one hook
  point (``pattern`` goes through the head outputs ``z``; see ``src.analysis.patching``) and
  has a result layout (``result_axes``), the one of ``transformer_lens.patching``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Per-layer hook points: name -> path inside `blocks.{layer}.`.
HOOK_POINTS: dict[str, str] = {
    "resid_pre": "hook_resid_pre",
    "resid_mid": "hook_resid_mid",
    "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out",
    "mlp_out": "hook_mlp_out",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "z": "attn.hook_z",
    "pattern": "attn.hook_pattern",
    "attn_scores": "attn.hook_attn_scores",
    "result": "attn.hook_result",
    "ln1_in": "ln1.hook_in",
    "ln2_in": "ln2.hook_in",
}
# Points whose activations are [batch, pos, d_model]: what the cache and SAEs read.
RESIDUAL_POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")

# Hooks outside the blocks.
EMBED = "hook_embed"
POS_EMBED = "hook_pos_embed"
LN_FINAL_IN = "ln_final.hook_in"
LN_FINAL_SCALE = "ln_final.hook_scale"
UNEMBED_OUT = "unembed.hook_out"  # the logits before any output transform (Gemma's softcap)

# Norms some models (Gemma-2) apply to a sublayer's output before it joins the residual
# stream: hook point -> the norm's name in the block. ``attn_out`` is then the normed output.
POST_NORMS: dict[str, str] = {"attn_out": "ln1_post", "mlp_out": "ln2_post"}


def hook_name(point: str, layer: int) -> str:
    """The TransformerLens name of hook point ``point`` in block ``layer``."""
    if point not in HOOK_POINTS:
        raise ValueError(f"hook point {point!r} is unknown; known: {', '.join(HOOK_POINTS)}")
    return f"blocks.{layer}.{HOOK_POINTS[point]}"


def block_hook_name(point: str, layer: int) -> str:
    """``hook_name`` for a point of ``HOOK_POINTS``; any other point ``p`` as
    ``blocks.{layer}.hook_{p}``, a hook some models have (``mlp_in``, ``attn_in``, ...)."""
    return hook_name(point, layer) if point in HOOK_POINTS else f"blocks.{layer}.hook_{point}"


def block_points(names: Iterable[str], layer: int) -> list[str]:
    """The hook points of block ``layer`` among the hook ``names`` of a model (the ``p`` of
    ``blocks.{layer}.hook_{p}`` and ``blocks.{layer}.attn.hook_{p}``), sorted, without the
    generic ``in`` / ``out``."""
    pattern = re.compile(rf"blocks\.{layer}\.(?:attn\.)?hook_(\w+)")
    found = (pattern.fullmatch(name) for name in names)
    return sorted({m[1] for m in found if m and m[1] not in ("in", "out")})


@dataclass(frozen=True)
class Component:
    """A sweepable activation: the hook point it patches and whether it has a head axis."""

    name: str
    point: str  # the hook point patched (pattern: through z = pattern @ v)
    per_head: bool
    kv: bool = False  # indexed by key/value heads (grouped-query attention)
    own: str = ""  # the point holding its own activation, when not ``point`` (pattern)

    def hook(self, layer: int) -> str:
        """The hook patched in block ``layer``."""
        return hook_name(self.point, layer)

    def activation_hook(self, layer: int) -> str:
        """The hook holding the component's own activation (``hook_pattern`` for pattern)."""
        return hook_name(self.own or self.point, layer)

    def axes(self, per_position: bool) -> tuple[str, ...]:
        """Result axes, in the order of the matching ``transformer_lens.patching`` function."""
        if not self.per_head:
            return ("layer", "pos") if per_position else ("layer",)
        if self.name == "pattern":  # pos = destination position
            return ("layer", "head", "pos") if per_position else ("layer", "head")
        return ("layer", "pos", "head") if per_position else ("layer", "head")


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("resid_pre", "resid_pre", per_head=False),
        Component("attn_out", "attn_out", per_head=False),
        Component("mlp_out", "mlp_out", per_head=False),
        Component("head_out", "z", per_head=True),
        Component("q", "q", per_head=True),
        Component("k", "k", per_head=True, kv=True),
        Component("v", "v", per_head=True, kv=True),
        Component("pattern", "z", per_head=True, own="pattern"),
    )
}
HEAD_COMPONENTS = tuple(name for name, c in COMPONENTS.items() if c.per_head)


def component(name: str) -> Component:
    """The component ``name``; a ValueError listing the known ones otherwise."""
    if name not in COMPONENTS:
        raise ValueError(f"component={name!r} is unknown; allowed: {', '.join(COMPONENTS)}")
    return COMPONENTS[name]


def result_axes(name: str, per_position: bool) -> tuple[str, ...]:
    """Axis names of a patching or attribution result of component ``name`` (before any
    per-prompt axis): resid_pre/attn_out/mlp_out ``(layer, pos)`` or ``(layer,)``;
    head_out/q/k/v ``(layer, pos, head)`` or ``(layer, head)``; pattern ``(layer, head, pos)``
    or ``(layer, head)``."""
    return component(name).axes(per_position)


def n_heads_of(model: Any, name: str) -> int:
    """Heads indexed by component ``name``: key/value heads for k and v under grouped-query
    attention, else the model's heads."""
    n_kv = getattr(model.cfg, "n_key_value_heads", None)
    return int(n_kv) if component(name).kv and n_kv else int(model.cfg.n_heads)


def available_components(model: Any) -> list[str]:
    """The components the model has (no mlp_out on attention-only models)."""
    attn_only = getattr(model.cfg, "attn_only", False)
    return [name for name in COMPONENTS if not (name == "mlp_out" and attn_only)]


def embedding_hooks(model: Any) -> list[str]:
    """The hooks whose outputs sum to the residual stream's input (``resid_pre`` of block 0):
    ``hook_embed``, plus ``hook_pos_embed`` where positions are added to the stream
    (``positional_embedding_type`` "standard"; rotary models have that hook, but it never
    fires)."""
    standard = getattr(model.cfg, "positional_embedding_type", "standard") == "standard"
    return [EMBED, POS_EMBED] if standard and POS_EMBED in model.hook_dict else [EMBED]


def post_norm(model: Any, point: str, layer: int) -> str | None:
    """The name (``blocks.{layer}.ln1_post``) of the norm that block ``layer`` applies to
    the output of ``point`` (``attn_out`` or ``mlp_out``) before adding it to the residual
    stream; None where the output joins the stream as it is (most models)."""
    name = f"blocks.{layer}.{POST_NORMS[point]}"
    return name if f"{name}.hook_scale" in model.hook_dict else None


def parallel_attn_mlp(model: Any) -> bool:
    """Whether the MLPs read the block's input (``resid_pre``) as its attention does, in
    parallel (GPT-NeoX / Pythia, GPT-J), rather than the stream after the attention."""
    return bool(getattr(model.cfg, "parallel_attn_mlp", False))


def check_indices(
    name: str, values: int | Sequence[int] | None, size: int, *, negative: bool = False
) -> list[int]:
    """``values`` (one index or several) checked against ``[0, size)`` (``[-size, size)``
    if ``negative``: from the end), as sorted non-negative ints; all of ``range(size)`` when
    None. A ValueError names ``name`` and the allowed range otherwise."""
    if values is None:
        return list(range(size))
    allowed = f"[{-size if negative else 0}, {size})"
    try:
        ints = (
            [operator.index(values)]
            if isinstance(values, int)
            else [operator.index(v) for v in values]
        )
    except TypeError as error:
        raise ValueError(f"{name} must be a list of ints in {allowed}, got {values!r}") from error
    if not ints:
        raise ValueError(f"{name} must not be empty; allowed values: {allowed}")
    bad = [v for v in ints if not (-size if negative else 0) <= v < size]
    if bad:
        raise ValueError(f"{name} {bad} out of range; allowed: {allowed}")
    return sorted({v % size for v in ints})

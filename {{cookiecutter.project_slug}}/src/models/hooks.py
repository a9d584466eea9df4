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


def hook_name(point: str, layer: int) -> str:
    """The TransformerLens name of hook point ``point`` in block ``layer``."""
    if point not in HOOK_POINTS:
        raise ValueError(f"hook point {point!r} is unknown; known: {', '.join(HOOK_POINTS)}")
    return f"blocks.{layer}.{HOOK_POINTS[point]}"


@dataclass(frozen=True)
class Component:
    """A sweepable activation: the hook point it patches and whether it has a head axis."""

    name: str
    point: str  # the hook point patched (pattern: through z = pattern @ v)
    per_head: bool
    kv: bool = False  # indexed by key/value heads (grouped-query attention)

    def hook(self, layer: int) -> str:
        return hook_name(self.point, layer)

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
        Component("pattern", "z", per_head=True),
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

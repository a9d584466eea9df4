"""What a patching-style sweep patches: the request checked against the model, as indices.

``activation_patch`` and ``attribution_patch`` take the same arguments (component, layout,
``layers`` / ``heads`` / ``positions`` subsets) and return the same layouts
(``src.models.hooks.result_axes``); both check them here, before any forward.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from src.models.hooks import HEAD_COMPONENTS, available_components, check_indices, n_heads_of
from src.models.hooks import component as get_component


def check_tokens(name: str, tokens: Any) -> None:
    """Raise unless ``tokens`` is an integer tensor ``[batch, pos]``."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"{name} must be an integer tensor [batch, pos], got {shape}")


@dataclass(frozen=True)
class SweepSpec:
    """A validated request: what to patch, where, and the layout of the result."""

    component: str
    per_position: bool
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    values: dict[str, list[int]]  # axis -> indices patched along it

    def indices(self) -> list[tuple[int, ...]]:
        """Every patched index in layout order (layer first, so sorted by layer)."""
        return list(itertools.product(*(self.values[axis] for axis in self.axes)))


def sweep_spec(
    model: Any,
    clean_tokens: Tensor,
    corrupted_tokens: Tensor,
    component: str,
    per_position: bool,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> SweepSpec:
    """The request checked against the model's config (no forward needed): a ValueError
    naming the bad argument and what is allowed otherwise."""
    axes = get_component(component).axes(per_position)
    check_tokens("clean_tokens", clean_tokens)
    check_tokens("corrupted_tokens", corrupted_tokens)
    if tuple(clean_tokens.shape) != tuple(corrupted_tokens.shape):
        raise ValueError(
            f"clean_tokens {tuple(clean_tokens.shape)} and corrupted_tokens "
            f"{tuple(corrupted_tokens.shape)} must have the same shape [batch, pos]"
        )
    if component not in available_components(model):
        allowed = ", ".join(available_components(model))
        raise ValueError(
            f"component={component!r} but the model is attention-only (cfg.attn_only); "
            f"allowed: {allowed}"
        )
    if heads is not None and component not in HEAD_COMPONENTS:
        raise ValueError(
            f"heads applies to the head components {HEAD_COMPONENTS}, not to {component!r}"
        )
    if positions is not None and not per_position:
        raise ValueError("positions needs per_position=True (otherwise all positions are patched)")
    n_layers, n_pos, n_heads = (
        model.cfg.n_layers,
        clean_tokens.shape[1],
        n_heads_of(model, component),
    )
    sizes = {"layer": n_layers, "pos": n_pos, "head": n_heads}
    values = {
        "layer": check_indices("layers", layers, n_layers),
        "pos": check_indices("positions", positions, n_pos, negative=True),
        "head": check_indices("heads", heads, n_heads),
    }
    return SweepSpec(
        component=component,
        per_position=per_position,
        axes=axes,
        shape=tuple(sizes[axis] for axis in axes),
        values={axis: values[axis] for axis in axes},
    )

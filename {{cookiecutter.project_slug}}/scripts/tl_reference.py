"""TransformerLens's activation patching on our inputs, in our layouts: the reference that
scripts/benchmark_patching.py and tests/test_patching.py compare `activation_patch` with.

TL's named functions (`get_act_patch_*`) are partials of `generic_activation_patch` with the
activation, patch setter and index axes of `TL_SPECS` (the tests check it). For `pattern`,
TL's `get_act_patch_attn_head_pattern_*` edit `hook_pattern`, which on native bridges fires
after the attention output is computed, so they return the corrupted baseline; the reference
patches `hook_z` with (clean pattern @ corrupted values) instead (`pattern_z_cache`), as a
pattern patch does in HookedTransformer: the same cost per index.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Callable
from typing import Any

import torch
import transformer_lens.patching as tlp

from src.analysis.patch_engine import pattern_times_values
from src.models.hooks import hook_name, n_heads_of, result_axes


def whole_setter(corrupted: Any, index: Any, clean: Any) -> Any:
    return clean.clone()


def z_by_dest_setter(corrupted: Any, index: Any, clean: Any) -> Any:
    layer, head, dest = index
    corrupted[:, dest, head] = clean[:, dest, head]
    return corrupted


_HEADS = (("head_out", "z"), ("q", "q"), ("k", "k"), ("v", "v"))  # ours -> TL's activation
# (component, per_position) -> (TL activation, patch setter, TL index axes)
TL_SPECS: dict[tuple[str, bool], tuple[str, Callable, tuple[str, ...]]] = {
    **{(c, False): (c, whole_setter, ("layer",)) for c in ("resid_pre", "attn_out", "mlp_out")},
    **{
        (c, True): (c, tlp.layer_pos_patch_setter, ("layer", "pos"))
        for c in ("resid_pre", "attn_out", "mlp_out")
    },
    **{(c, False): (tl, tlp.layer_head_vector_patch_setter, ("layer", "head")) for c, tl in _HEADS},
    **{
        (c, True): (tl, tlp.layer_pos_head_vector_patch_setter, ("layer", "pos", "head"))
        for c, tl in _HEADS
    },
    ("pattern", False): ("z", tlp.layer_head_vector_patch_setter, ("layer", "head")),
    ("pattern", True): ("z", z_by_dest_setter, ("layer", "head_index", "dest_pos")),
}
# (component, per_position) -> the named TL function, used when every index is patched
TL_FUNCTIONS = {
    ("resid_pre", True): "get_act_patch_resid_pre",
    ("attn_out", True): "get_act_patch_attn_out",
    ("mlp_out", True): "get_act_patch_mlp_out",
    **{
        (component, per_position): f"get_act_patch_attn_head_{tl}_{layout}"
        for component, tl in (("head_out", "out"), ("q", "q"), ("k", "k"), ("v", "v"))
        for per_position, layout in ((False, "all_pos"), (True, "by_pos"))
    },
}


def pattern_z_cache(model: Any, clean_cache: Any, corrupted_cache: Any) -> dict[str, Any]:
    """Per layer, the head outputs of the clean pattern on the corrupted values: what TL is
    given to patch ``pattern`` through ``hook_z``."""
    return {
        hook_name("z", layer): pattern_times_values(
            clean_cache[hook_name("pattern", layer)], corrupted_cache[hook_name("v", layer)]
        )
        for layer in range(model.cfg.n_layers)
    }


def run_tl(
    model: Any,
    corrupted: Any,
    cache: Any,
    metric: Callable,
    component: str,
    per_position: bool,
    subset: dict[str, list[int]],
) -> torch.Tensor:
    """TL's result in our layout (NaN outside ``subset``, axis -> indices): the named TL
    function when everything is patched, else `generic_activation_patch` with the same
    patch setter over the same indices (one full forward per index)."""
    import pandas as pd

    axes = result_axes(component, per_position)
    sizes = {
        "layer": model.cfg.n_layers,
        "pos": corrupted.shape[1],
        "head": n_heads_of(model, component),
    }
    ranges = {axis: subset.get(axis, list(range(sizes[axis]))) for axis in axes}
    named = TL_FUNCTIONS.get((component, per_position))
    if named and all(ranges[axis] == list(range(sizes[axis])) for axis in axes):
        with contextlib.redirect_stderr(io.StringIO()):  # TL's tqdm bar
            return getattr(tlp, named)(model, corrupted, cache, metric).float().cpu()
    activation, setter, tl_axes = TL_SPECS[(component, per_position)]
    index_df = pd.DataFrame(
        list(itertools.product(*(ranges[axis] for axis in axes))), columns=list(tl_axes)
    )
    with contextlib.redirect_stderr(io.StringIO()):
        flat = tlp.generic_activation_patch(
            model, corrupted, cache, metric, setter, activation, index_df=index_df
        )
    result = torch.full([sizes[axis] for axis in axes], float("nan"))
    result[tuple(torch.tensor(index_df.values).T)] = flat.float().cpu()
    return result

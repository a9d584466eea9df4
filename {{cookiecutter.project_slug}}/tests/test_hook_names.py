"""The hook vocabulary names hooks that exist on a TransformerLens bridge."""

from __future__ import annotations

import pytest

from src.models import hooks


@pytest.fixture(scope="module")
def model(small_bridge):
    return small_bridge(d_model=16, n_ctx=8, d_head=4, d_vocab=10, d_mlp=32, act_fn="gelu")


def test_every_hook_name_exists(model):
    names = set(model.hook_dict)
    wanted = [hooks.hook_name(point, layer) for point in hooks.HOOK_POINTS for layer in (0, 1)]
    wanted += [hooks.EMBED, hooks.POS_EMBED, hooks.LN_FINAL_IN, hooks.LN_FINAL_SCALE]
    assert [name for name in wanted if name not in names] == []


def test_components():
    assert hooks.hook_name("attn_out", 3) == "blocks.3.hook_attn_out"
    assert hooks.component("head_out").hook(1) == "blocks.1.attn.hook_z"
    assert hooks.component("pattern").hook(0) == "blocks.0.attn.hook_z"
    assert hooks.result_axes("pattern", True) == ("layer", "head", "pos")
    assert hooks.result_axes("q", True) == ("layer", "pos", "head")
    assert hooks.result_axes("mlp_out", False) == ("layer",)
    assert hooks.HEAD_COMPONENTS == ("head_out", "q", "k", "v", "pattern")


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="allowed: resid_pre, attn_out"):
        hooks.component("resid")
    with pytest.raises(ValueError, match="hook point 'resid' is unknown"):
        hooks.hook_name("resid", 0)


def test_kv_heads(model):
    assert hooks.n_heads_of(model, "k") == 4 and hooks.n_heads_of(model, "q") == 4
    assert hooks.available_components(model)[:3] == ["resid_pre", "attn_out", "mlp_out"]

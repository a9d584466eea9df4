"""Direct logit attribution: exact sums on the toy and on a model with MLPs and biases, and
agreement with TransformerLens's own DLA (`transformer_lens.tools.analysis`)."""

from __future__ import annotations

import pytest
import torch

from src.analysis.dla import direct_logit_attribution
from src.data.induction import make_induction_dataset
from src.models.load import load_model


@pytest.fixture(scope="module")
def induction():
    return make_induction_dataset(8, seq_length=31, d_vocab=64, bos_token_id=0, seed=0)


@pytest.fixture(scope="module")
def mlp_model(biased_bridge):
    return biased_bridge()


def _expected_remainder(model, answer, wrong):
    """What no component writes: the final LayerNorm bias and the unembedding bias."""
    direction = model.W_U[:, answer] - model.W_U[:, wrong]
    return (model.ln_final.b @ direction + model.b_U[answer] - model.b_U[wrong]).detach()


def _assert_exact(result, model, tokens, answer, wrong):
    """Terms + remainder = the real logit difference, and the remainder is exactly the bias
    part; returns the real logit difference."""
    real = _real_logit_diff(model, tokens, answer, wrong)
    torch.testing.assert_close(
        result.per_prompt.sum(0) + result.remainder_per_prompt, real, atol=1e-4, rtol=0
    )
    expected = _expected_remainder(model, answer, wrong)
    torch.testing.assert_close(result.remainder_per_prompt, expected, atol=1e-4, rtol=0)
    return real


def _real_logit_diff(model, tokens, answer, wrong):
    with torch.no_grad():
        final = model(tokens)[:, -1]
    return final[torch.arange(len(tokens)), answer] - final[torch.arange(len(tokens)), wrong]


@pytest.mark.parametrize("by", ["head", "component"])
def test_dla_sums_to_logit_diff_on_toy(toy_model, induction, by):
    tokens, answer, wrong = induction.clean_tokens, induction.answer_tokens, induction.wrong_tokens
    result = direct_logit_attribution(toy_model, tokens, answer, wrong, by=by)
    # the remainder is exactly the bias part (|remainder| <= 0.17 of a ~11.5 logit diff)
    real = _assert_exact(result, toy_model, tokens, answer, wrong)
    assert result.logit_diff == pytest.approx(real.mean().item(), abs=1e-4)
    torch.testing.assert_close(result.values, result.per_prompt.mean(1))
    if by == "head":
        assert result.labels[:3] == ["embed", "pos_embed", "a0.h0"]
        assert "a1.bias" in result.labels and "m0" not in result.labels
        heads = result.by_head()
        assert heads.shape == (2, 4)
        # the layer-1 induction heads write the answer; layer 0 writes almost nothing direct
        assert heads[1].min() > 1.0 and heads[1].sum() > 0.9 * result.logit_diff
        assert heads[0].abs().max() < 0.1
    else:
        assert result.labels == ["embed", "pos_embed", "attn_0", "attn_1"]
        with pytest.raises(ValueError, match="by='head'"):
            result.by_head()


def test_dla_sums_to_logit_diff_with_mlps(mlp_model, mlp_pairs):
    tokens, _, answer, wrong = mlp_pairs
    heads = direct_logit_attribution(mlp_model, tokens, answer, wrong)
    components = direct_logit_attribution(mlp_model, tokens, answer, wrong, by="component")
    assert heads.labels[-2:] == ["a1.bias", "m1"]
    assert components.labels == ["embed", "pos_embed", "attn_0", "mlp_0", "attn_1", "mlp_1"]
    for result in (heads, components):
        _assert_exact(result, mlp_model, tokens, answer, wrong)
    # heads + bias of a layer = that layer's attention output
    layer_1 = [i for i, label in enumerate(heads.labels) if label.startswith("a1.")]
    torch.testing.assert_close(
        heads.per_prompt[layer_1].sum(0),
        components.per_prompt[components.labels.index("attn_1")],
        atol=1e-5,
        rtol=0,
    )


def _tl_reference(model_factory):
    """The same weights with LayerNorm folded (what TL's DLA requires on a bridge).

    Value biases stay per head (``fold_value_biases=False``); folding them moves
    ``b_V @ W_O`` from the head terms into ``b_O``.
    """
    model = model_factory()
    model.enable_compatibility_mode(disable_warnings=True, fold_value_biases=False)
    return model


@pytest.mark.parametrize("which", ["toy", "mlp"])
def test_dla_matches_transformer_lens(
    toy_model, induction, mlp_model, mlp_pairs, biased_bridge, which
):
    """TL's direct_logit_attribution (unit head / component) on a folded copy, to 1e-4."""
    from transformer_lens.tools.analysis import direct_logit_attribution as tl_dla

    if which == "toy":
        model, factory = toy_model, lambda: load_model("toy-induction", device="cpu")
        tokens, answer, wrong = (
            induction.clean_tokens,
            induction.answer_tokens,
            induction.wrong_tokens,
        )
    else:
        model, factory = mlp_model, biased_bridge
        tokens, _, answer, wrong = mlp_pairs
    reference_model = _tl_reference(factory)
    ours = direct_logit_attribution(model, tokens, answer, wrong)
    ref = tl_dla(reference_model, tokens, answer_tokens=answer, incorrect_tokens=wrong, unit="head")
    is_head = [".h" in label for label in ours.labels]
    torch.testing.assert_close(ours.per_prompt[is_head], ref.attribution[:-1], atol=1e-4, rtol=0)
    # TL's remainder = everything but the heads (embeddings, b_O, MLPs)
    others = ours.per_prompt[[not h for h in is_head]].sum(0)
    torch.testing.assert_close(others, ref.attribution[-1], atol=1e-4, rtol=0)

    ours = direct_logit_attribution(model, tokens, answer, wrong, by="component")
    ref = tl_dla(reference_model, tokens, answer_tokens=answer, incorrect_tokens=wrong)
    assert len(ref.labels) == len(ours.labels)
    torch.testing.assert_close(ours.per_prompt, ref.attribution, atol=1e-4, rtol=0)
    # our DLA on the folded model (how pretrained models load) gives the same terms
    folded = direct_logit_attribution(reference_model, tokens, answer, wrong, by="component")
    torch.testing.assert_close(folded.per_prompt, ours.per_prompt, atol=1e-4, rtol=0)


def test_dla_bad_inputs(toy_model, induction):
    tokens, answer, wrong = induction.clean_tokens, induction.answer_tokens, induction.wrong_tokens
    with pytest.raises(ValueError, match="by"):
        direct_logit_attribution(toy_model, tokens, answer, wrong, by="layer")
    with pytest.raises(ValueError, match="answer_tokens"):
        direct_logit_attribution(toy_model, tokens, answer[:3], wrong)
    with pytest.raises(ValueError, match="wrong_tokens"):
        direct_logit_attribution(toy_model, tokens, answer, wrong + 64)
    with pytest.raises(ValueError, match="tokens"):
        direct_logit_attribution(toy_model, tokens[0], answer, wrong)

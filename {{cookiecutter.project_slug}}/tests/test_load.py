"""Device and dtype parsing, name resolution and the offline error of `load_model`."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import torch

from src.models.load import (
    PRETRAINED_MODELS,
    ModelNotAvailableError,
    load_model,
    parse_dtype,
    resolve_device,
)


def test_auto_device_is_the_best_available():
    expected = "cuda" if torch.cuda.is_available() else "mps"
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        expected = "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device='cuda'.*available: \['cpu'"):
        resolve_device("cuda")


def test_invalid_device_name():
    with pytest.raises(ValueError, match="not a valid torch device"):
        resolve_device("gpu0")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("float16", torch.float16),
        ("half", torch.float16),
        ("bf16", torch.bfloat16),
        ("BFloat16", torch.bfloat16),
        ("torch.float64", torch.float64),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_parse_dtype(name, expected):
    assert parse_dtype(name) is expected


def test_unknown_dtype_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dtype 'float8'.*'bfloat16'"):
        parse_dtype("float8")


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'gpt5'") as caught:
        load_model("gpt5", device="cpu")
    assert "'toy-induction'" in str(caught.value) and "'gpt2-small'" in str(caught.value)


def test_toy_model_dtype_and_device(toy_model):
    half = load_model("toy-induction", device="cpu", dtype="bfloat16")
    assert next(half.parameters()).dtype == torch.bfloat16
    assert next(toy_model.parameters()).dtype == torch.float32  # the shared fixture is untouched
    assert not half.training


@pytest.mark.parametrize("name", ["gpt2-small", "EleutherAI/pythia-70m-deduped"])
def test_offline_pretrained_model_is_a_clear_error(name, monkeypatch, tmp_path):
    # huggingface_hub reads HF_HUB_OFFLINE and the cache dir at import: patch both constants
    # too. The empty cache makes the test independent of what this machine has downloaded.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    hf_id = PRETRAINED_MODELS.get(name, name)
    with pytest.raises(ModelNotAvailableError) as caught:
        load_model(name, device="cpu")
    message = str(caught.value)
    assert f"'{hf_id}' are not in the local Hugging Face cache" in message
    assert f"download {hf_id}" in message
    assert isinstance(caught.value.__cause__, OSError)  # the real loader ran and failed


@pytest.mark.parametrize("arch", ["gpt2", "gpt-neox", "gemma-2", "qwen2"])
def test_local_checkpoint_matches_its_hugging_face_model(arch, tiny_checkpoints, pretrained_model):
    """A checkpoint directory loads as a downloaded model does, and its logits equal the
    Hugging Face model's own up to a constant per position (compatibility mode centers the
    unembedding, which softmax ignores): compared centred and as log-probabilities."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_checkpoints[arch]
    model = pretrained_model(arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokens = torch.tensor([tokenizer.encode("When Mary and John went to the store, John gave")])
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(path).eval()(tokens).logits
        logits = model(tokens)

    def centred(x):
        return x - x.mean(-1, keepdim=True)

    assert logits.shape == expected.shape and expected.abs().max() > 0.01
    torch.testing.assert_close(centred(logits), centred(expected), rtol=0, atol=1e-4)
    torch.testing.assert_close(logits.log_softmax(-1), expected.log_softmax(-1), rtol=0, atol=1e-4)
    assert model.cfg.n_layers == 2 and not model.training


def test_directory_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory but not a Hugging Face checkpoint"):
        load_model(str(tmp_path), device="cpu")

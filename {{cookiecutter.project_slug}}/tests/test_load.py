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


def _unreachable_hub(monkeypatch, cache):
    """No HF_HUB_OFFLINE, and a Hub endpoint that refuses connections (a closed local port)."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def test_unreachable_hub_fails_at_once_without_hf_hub_offline(monkeypatch, tmp_path):
    """Offline without HF_HUB_OFFLINE=1: no half minute of retries, and the error says to set
    it; offline mode is only on for the load."""
    import time

    from src.models.load import hub_reachable

    _unreachable_hub(monkeypatch, tmp_path)
    assert not hub_reachable()
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as caught:
        load_model("gpt2-small", device="cpu")
    assert time.perf_counter() - start < 5  # huggingface_hub's retries took 24 s
    assert "set HF_HUB_OFFLINE=1" in str(caught.value)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


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


def _hf_cache_with(checkpoint, hf_id: str, cache):
    """A Hugging Face hub cache at `cache` holding `checkpoint`'s files as `hf_id`'s main
    revision, laid out as `hf download` leaves them."""
    import shutil

    repo = cache / f"models--{hf_id.replace('/', '--')}"
    shutil.copytree(checkpoint, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def _offline(monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def test_cached_model_loads_with_an_unreachable_hub(tiny_checkpoints, monkeypatch, tmp_path):
    _hf_cache_with(tiny_checkpoints["gpt2"], "gpt2", tmp_path)
    _unreachable_hub(monkeypatch, tmp_path)
    assert load_model("gpt2-small", device="cpu").cfg.n_layers == 2


def test_pretrained_name_resolves_from_the_offline_hf_cache(
    tiny_checkpoints, pretrained_model, monkeypatch, tmp_path
):
    """`gpt2-small` with HF_HUB_OFFLINE=1 loads from the local cache (a tiny GPT-2 stands in
    for the real weights there): the same model as loading its directory."""
    _hf_cache_with(tiny_checkpoints["gpt2"], "gpt2", tmp_path)
    _offline(monkeypatch, tmp_path)
    model = load_model("gpt2-small", device="cpu")
    tokens = torch.tensor([[0, 5, 17, 300, 42]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), pretrained_model("gpt2")(tokens))


def _hub_http_error(kind: str, hf_id: str):
    import httpx2
    from huggingface_hub import errors

    request = httpx2.Request("GET", f"https://huggingface.co/{hf_id}/resolve/main/config.json")
    response = httpx2.Response(403 if kind == "GatedRepoError" else 404, request=request)
    return getattr(errors, kind)(f"{kind} for {hf_id}", response=response)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("GatedRepoError", r"'google/gemma-2-2b' is a gated model: accept its licence at "
         r"https://huggingface.co/google/gemma-2-2b .*HF_TOKEN"),
        ("RepositoryNotFoundError", r"no Hugging Face model 'google/gemma-2-2b'.*known names"),
    ],
)  # fmt: skip
def test_hub_refusals_are_one_clear_line(kind, expected, monkeypatch):
    """The Hub's answers for a gated or a missing repository (raised where the download
    would raise them, wrapped as transformers wraps them) become one line saying what to do."""
    from transformer_lens.model_bridge import TransformerBridge

    def refuse(hf_id, **kwargs):
        raise OSError(f"cannot load {hf_id}") from _hub_http_error(kind, hf_id)

    monkeypatch.setattr(TransformerBridge, "boot_transformers", refuse)
    with pytest.raises(ModelNotAvailableError, match=expected) as caught:
        load_model("gemma-2-2b", device="cpu")
    assert "\n" not in str(caught.value)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    import json

    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["MyResearchNetForCausalLM"]})
    )
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"MyResearchNetForCausalLM architecture, which "
                       r"TransformerLens's bridge does not support; tested here: GPT2LMHeadModel"):  # fmt: skip
        load_model(str(tmp_path), device="cpu")


def test_checkpoint_without_weights_names_what_is_missing(tiny_checkpoints, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_checkpoints["qwen2"], tmp_path / "qwen2")
    (copy / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"not a Hugging Face checkpoint \(no weights\)"):
        load_model(str(copy), device="cpu")


def test_more_devices_than_gpus_is_a_clear_error(tiny_checkpoints):
    n = max(2, torch.cuda.device_count() + 1)
    with pytest.raises(ValueError, match=rf"model.n_devices={n} needs {n} CUDA GPUs"):
        load_model(str(tiny_checkpoints["gpt2"]), device="cpu", n_devices=n)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_half_precision_checkpoints_load_and_agree(arch, dtype, tiny_checkpoints, pretrained_model):
    """bfloat16 and float16 load on the CPU; their next-token log-probabilities agree with
    float32 to the precision of the format."""
    model = load_model(str(tiny_checkpoints[arch]), device="cpu", dtype=dtype)
    assert next(model.parameters()).dtype == parse_dtype(dtype)
    tokens = torch.tensor([[0, 5, 17, 300, 42, 99, 7]])
    with torch.no_grad():
        half = model(tokens).float().log_softmax(-1)
        full = pretrained_model(arch)(tokens).log_softmax(-1)
    tol = 0.05 if dtype == "bfloat16" else 0.01
    torch.testing.assert_close(half, full, rtol=0, atol=tol)


def test_env_file_exports_unset_variables(tmp_path, monkeypatch):
    """HF_TOKEN in the project's .env reaches the Hugging Face libraries; the environment
    wins over the file."""
    import os

    from scripts.common import load_env_file

    env = tmp_path / ".env"
    env.write_text('# secrets\nHF_TOKEN="hf_abc"\nexport WANDB_API_KEY=xyz\nSET_ALREADY=file\n')
    for key in ("HF_TOKEN", "WANDB_API_KEY"):
        monkeypatch.setenv(key, "placeholder")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SET_ALREADY", "environment")
    load_env_file(env)
    assert os.environ["HF_TOKEN"] == "hf_abc" and os.environ["WANDB_API_KEY"] == "xyz"
    assert os.environ["SET_ALREADY"] == "environment"

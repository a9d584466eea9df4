"""Shared fixtures: the trained toy model (trained once, then read from the toy cache), tiny
random-init Hugging Face checkpoints of each supported architecture, small native bridges."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def toy_model():
    """The `toy-induction` model on the CPU, eval mode. Do not modify it in a test."""
    from src.models.load import load_model  # imported here: transformer-lens takes seconds

    return load_model("toy-induction", device="cpu")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A local text file of IOI-style sentences (about 50k characters), the text that the
    tiny checkpoints' tokenizer is trained on."""
    from src.models.checkpoints import sample_corpus

    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(sample_corpus()), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_corpus, tmp_path_factory):
    """Architecture -> directory of a tiny random-init Hugging Face checkpoint (2 layers,
    d_model 64, 4 heads, context 128, a 512-token BPE trained on ``tiny_corpus``), saved
    as ``save_pretrained`` does: ``load_model(str(path))`` loads it as a downloaded model."""
    from src.models.checkpoints import ARCHITECTURES, save_checkpoint, train_tokenizer

    tokenizer = train_tokenizer(tiny_corpus.read_text(encoding="utf-8").splitlines())
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: save_checkpoint(arch, root / f"tiny-{arch}", tokenizer) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def pretrained_model(tiny_checkpoints):
    """A cache of the tiny checkpoints loaded through ``load_model`` (float32, CPU):
    ``pretrained_model("gemma-2")``. Do not modify them in a test."""
    from src.models.load import load_model

    loaded = {}

    def get(arch: str):
        if arch not in loaded:
            loaded[arch] = load_model(str(tiny_checkpoints[arch]), device="cpu")
        return loaded[arch]

    return get


@pytest.fixture(scope="session")
def small_bridge():
    """A factory of small random-init native bridges (eval mode, seeded): 2 layers,
    d_model 32, 4 heads of 8, MLPs, LayerNorm, 50 tokens, context 16. Keyword arguments
    override the config (``TransformerBridgeConfig`` fields)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    fields = {
        "n_layers": 2,
        "d_model": 32,
        "n_heads": 4,
        "d_head": 8,
        "d_mlp": 64,
        "d_vocab": 50,
        "n_ctx": 16,
        "act_fn": "gelu_new",
        "normalization_type": "LN",
        "attn_only": False,
        "positional_embedding_type": "standard",
        "seed": 0,
    }

    def make(**overrides):
        cfg = TransformerBridgeConfig(**(fields | overrides))
        return TransformerBridge.boot_native(cfg, device="cpu").eval()

    return make


@pytest.fixture(scope="session")
def biased_bridge(small_bridge):
    """A factory of ``small_bridge()`` with random biases and LayerNorm weights (zero biases
    and unit weights, as initialised, would hide bugs that involve them)."""
    import torch

    def make():
        model = small_bridge()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.copy_(0.5 * torch.randn(param.shape, generator=generator))
                elif "ln" in name:
                    param.copy_(1 + 0.3 * torch.randn(param.shape, generator=generator))
        return model

    return make


@pytest.fixture(scope="session")
def mlp_pairs():
    """Three clean / corrupted prompt pairs of 12 tokens for ``small_bridge`` models (six
    tokens changed), with answer and wrong tokens."""
    import torch

    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (3, 12), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 3:9] = torch.randint(0, 50, (3, 6), generator=generator)
    answer = torch.randint(0, 50, (3,), generator=generator)
    return clean, corrupted, answer, (answer + 7) % 50
{%- if cookiecutter.experiment_tracking == "wandb" %}


@pytest.fixture(autouse=True)
def wandb_offline(tmp_path_factory, monkeypatch):
    """Runs log to W&B by default here: keep test runs offline, quiet and out of `wandb/`."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    monkeypatch.setenv("WANDB_SILENT", "true")
{%- endif %}

"""The memory check before loading: dimensions without a download, the estimate, the one
line that says what would fit, and a run stopped by it with nothing written."""

from __future__ import annotations

import pytest

from src.models.families import family
from src.models.memory import (
    InsufficientMemoryError,
    check_fits,
    estimate_memory,
    model_dims,
)


def test_table_model_weights():
    dims = model_dims("gpt2-small")
    assert dims is family("gpt2-small") or dims == family("gpt2-small")
    est = estimate_memory(dims, "float32", batch=1, seq_len=1)
    assert est.weights_gb == pytest.approx(
        0.737, abs=1e-3
    )  # 184.3M weights in the bridge x 4 bytes
    assert estimate_memory(dims, "bfloat16", 1, 1).weights_gb == pytest.approx(0.369, abs=1e-3)
    assert estimate_memory(dims, "float32", 1, 1, n_devices=2).weights_gb == pytest.approx(
        0.369, abs=1e-3
    )


@pytest.mark.parametrize("arch", ["gpt2", "gpt-neox", "gemma-2", "qwen2"])
def test_checkpoint_dims_count_its_weights(arch, tiny_checkpoints, pretrained_model):
    """A local checkpoint's dimensions come from its config.json, and the weights counted
    from them are within 2% of those the loaded bridge holds (norms and biases left out)."""
    dims = model_dims(str(tiny_checkpoints[arch]))
    model = pretrained_model(arch)
    assert (dims.n_layers, dims.d_model, dims.n_heads) == (2, 64, 4)
    assert dims.n_kv_heads == model.cfg.n_key_value_heads or model.cfg.n_key_value_heads is None
    n_params = sum(p.numel() for p in model.parameters())
    assert dims.n_params == pytest.approx(n_params, rel=0.02)


def test_unknown_model_is_not_checked(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_dims("someone/never-downloaded") is None


def test_gradients_cost_more_than_a_forward():
    dims = family("gpt2-small")
    forward = estimate_memory(dims, "float32", 8, 128)
    backward = estimate_memory(dims, "float32", 8, 128, gradients=True)
    # a full cache of GPT-2 small is about 1 MiB per token at seq 128 (REFERENCES.md)
    assert backward.activations_gb == pytest.approx(2 * 8 * 128 * 1.05e6 / 1e9, rel=0.1)
    assert forward.activations_gb < backward.activations_gb / 3  # logits dominate a forward


def test_too_big_says_what_would_fit():
    dims = family("gemma-2-2b")
    with pytest.raises(InsufficientMemoryError) as caught:
        check_fits("gemma-2-2b", dims, "float32", 32, 128, 16.0, device="cuda:0", gradients=True)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("gemma-2-2b needs about ")
    assert "12.8 GB of float32 weights" in message and "but 16.0 GB is free" in message
    assert "--batch-size " in message and "model.dtype: bfloat16" in message
    assert "model.n_devices: 2" in message
    fits = int(message.split("--batch-size ")[1].split(")")[0])
    assert fits >= 1 and check_fits("gemma-2-2b", dims, "float32", fits, 128, 16.0, gradients=True)
    with pytest.raises(InsufficientMemoryError):
        check_fits("gemma-2-2b", dims, "float32", fits + 1, 128, 16.0, gradients=True)


def test_run_that_cannot_fit_stops_before_loading(tmp_path, capsys):
    """A config whose model cannot fit its memory stops with one line and exit status 2,
    before loading anything, and writes no log."""
    import yaml

    from scripts.run_experiment import main

    with open("configs/toy_induction.yaml", encoding="utf-8") as file:
        config = yaml.safe_load(file)
    config["model"] = {"name": "gpt2-small", "device": "cpu", "memory_gb": 0.1}
    config["output"]["results_dir"] = str(tmp_path / "results")
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {path}: gpt2-small needs about ")
    assert "GB on cpu (0.7 GB of float32 weights + " in err and "but 0.1 GB is free" in err
    assert not (tmp_path / "results").exists()

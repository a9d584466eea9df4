"""Shared fixtures: the trained toy model (trained once, then read from the toy cache)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def toy_model():
    """The `toy-induction` model on the CPU, eval mode. Do not modify it in a test."""
    from src.models.load import load_model  # imported here: transformer-lens takes seconds

    return load_model("toy-induction", device="cpu")
{%- if cookiecutter.experiment_tracking == "wandb" %}


@pytest.fixture(autouse=True)
def wandb_offline(tmp_path_factory, monkeypatch):
    """Runs log to W&B by default here: keep test runs offline, quiet and out of `wandb/`."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    monkeypatch.setenv("WANDB_SILENT", "true")
{%- endif %}

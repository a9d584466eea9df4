"""Runners: one module per experiment kind, ``run_*(model, dataset, config) -> dict`` of
JSON-able results, that reads its config section and calls methods from ``src.analysis``.
No experiment module imports another (shared runner helpers: ``common``, not a kind), and
none draws a figure: a kind names its figures (``KIND.figures``), which ``src.visualization``
draws from the results.

A kind module imports only light things at its top (pydantic, ``src.utils.config``, the
registry, ``src.models.hooks``) and its methods inside its runner: the registry imports every
kind to validate a config, and a typo in a config must be reported in a blink, not after
torch loads (``tests/test_registry.py`` checks it)."""

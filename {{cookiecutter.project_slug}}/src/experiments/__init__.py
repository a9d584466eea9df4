"""Runners: one module per experiment kind, ``run_*(model, dataset, config) -> dict`` of
JSON-able results, that reads its config section and calls methods from ``src.analysis``.
No experiment module imports another (shared runner helpers: ``common``, not a kind). With
``output.figures`` a runner still has its figures drawn, by ``src.visualization`` functions
imported where they are called (never at module level)."""

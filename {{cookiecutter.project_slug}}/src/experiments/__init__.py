"""Experiment logic only: each ``run_*(model, dataset, config) -> dict`` of plain results."""

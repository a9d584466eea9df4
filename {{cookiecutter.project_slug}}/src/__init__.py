"""Research code of this project: models, data, experiments, analysis and plots."""

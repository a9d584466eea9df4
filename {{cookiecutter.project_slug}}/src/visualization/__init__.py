"""Figures: draw files (PNG, HTML, Markdown) from results dicts and arrays only. No model is
loaded and no forward runs here, except in ``generate_all``, the command that rebuilds every
figure from the logs (it calls ``src.analysis`` for what a log does not hold)."""

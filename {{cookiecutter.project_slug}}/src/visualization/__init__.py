"""Figures: draw files (PNG, HTML, Markdown) from results dicts and arrays only. No model is
loaded and no forward runs here: the runners store what the figures need in their results
(``figures`` names the makers; ``generate_all`` redraws every log's figures)."""

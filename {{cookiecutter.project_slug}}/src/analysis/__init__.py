"""Analysis of model internals: metrics, head scores and statistics (pure functions)."""

"""Model loading: pretrained TransformerLens bridges and offline toy models."""

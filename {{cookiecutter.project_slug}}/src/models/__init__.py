"""Foundation: model loading (pretrained TransformerLens bridges, offline toy models), the hook
vocabulary every other layer names activations with, and the head scores the toy is trained
to show. Imports only ``src.utils`` and ``src.data``; nothing here draws or runs experiments."""

"""Methods: functions of (model, tensors or a dataset, plain arguments) that return tensors,
dataclasses or plain dicts. No config objects, no files written, no printing, no figures.
Import from ``src.utils``, ``src.models``, ``src.data`` and one another only."""

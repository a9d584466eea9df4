"""Typed, validated configs loaded from YAML.

``load_config(path)`` reads a YAML file into frozen dataclasses and checks it against
their type hints. An unknown key, a missing key or a wrong type raises ``ConfigError``
with one line naming the file and the dotted key, e.g.::

    configs/x.yaml: data.n_samples: expected int, got 'ten'

Which schema: a file with a top-level ``sae`` section is a ``SAETrainingConfig``; any
other file is an ``ExperimentConfig``. An experiment config holds at most one analysis
section (see ``ANALYSIS_SECTIONS``); ``ExperimentConfig.kind`` names it, or is
``"baseline"`` when there is none, and ``scripts/run_experiment.py`` dispatches on it.

To add a key, add a field to a dataclass below (its type hint is its validation; value
checks go in ``__post_init__`` via ``_check``). To add an analysis section, add a
dataclass, an optional field on ``ExperimentConfig`` and its name to
``ANALYSIS_SECTIONS``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

Dtype = Literal["float32", "float16", "bfloat16"]
# Indices to sweep: a list, or every index.
Indices = tuple[int, ...] | Literal["all"]
# Keep in sync with src.analysis.metrics.METRICS (a test checks).
MetricName = Literal["logit_diff", "answer_prob", "answer_logprob", "answer_loss"]
HookPoint = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
# Keep in sync with src.experiments.patching.COMPONENTS (a test checks).
Component = Literal["resid_pre", "attn_out", "mlp_out", "head_out", "q", "k", "v", "pattern"]
Ablation = Literal["corrupted", "mean"]
SAEArchitecture = Literal["standard", "topk", "batchtopk", "jumprelu"]

# Optional sections of ExperimentConfig that choose what the experiment runs.
ANALYSIS_SECTIONS: tuple[str, ...] = ("patching", "attribution", "circuit_discovery")


class ConfigError(ValueError):
    """A config that cannot be used; the message is one line naming the file and key."""


class _FieldError(ConfigError):
    """A problem at a (relative) dotted key; load_config prefixes the file and parents."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise _FieldError(key, message)


def _check_indices(value: Indices, key: str, *, allow_negative: bool = False) -> None:
    if value == "all":
        return
    _check(len(value) > 0, key, "expected a non-empty list or 'all'")
    _check(allow_negative or min(value) >= 0, key, "indices must be >= 0")


# --- experiment schema ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExperimentMeta:
    name: str
    description: str = ""

    def __post_init__(self) -> None:
        ok = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) is not None
        _check(ok, "name", "must be usable in a file name (letters, digits, '_', '-', '.')")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str
    device: str = "auto"
    dtype: Dtype = "float32"


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str
    n_samples: int
    seq_length: int | None  # null: the dataset's own length (e.g. IOI's templates)
    seed: int = 0
    path: str | None = None
    corruption: str | None = None  # the dataset's own choices; None = its default

    def __post_init__(self) -> None:
        _check(self.n_samples > 0, "n_samples", "must be > 0")
        _check(self.seq_length is None or self.seq_length > 0, "seq_length", "must be > 0")
        _check(self.seed >= 0, "seed", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class PatchingConfig:
    """Activation patching: which activations to patch (clean into corrupted) and where."""

    layers: Indices = "all"
    heads: Indices = "all"
    positions: Indices = "all"  # negative positions count from the end
    metric: MetricName = "logit_diff"
    components: tuple[Component, ...] = ("head_out",)
    per_position: bool = False  # one patch per (layer, position) instead of all positions

    def __post_init__(self) -> None:
        _check_indices(self.layers, "layers")
        _check_indices(self.heads, "heads")
        _check_indices(self.positions, "positions", allow_negative=True)
        _check(len(self.components) > 0, "components", "expected a non-empty list")


@dataclass(frozen=True, kw_only=True)
class AttributionConfig(PatchingConfig):
    """Attribution patching (gradient estimate of activation patching) and direct logit
    attribution; ``compare: true`` also runs activation patching and reports agreement."""

    compare: bool = True
    dla: bool = True


@dataclass(frozen=True, kw_only=True)
class CircuitDiscoveryConfig:
    """Edge attribution patching (EAP; EAP-IG when ig_steps > 0), then a faithfulness check
    that ablates every edge outside the circuit."""

    metric: MetricName = "logit_diff"
    ig_steps: int = 5  # integrated-gradient steps; 0 = plain EAP
    top_n: int | None = 20  # keep the top_n edges by |score| ...
    threshold: float | None = None  # ... or every edge with |score| >= threshold
    ablation: Ablation = "corrupted"  # what an ablated edge carries

    def __post_init__(self) -> None:
        _check(self.ig_steps >= 0, "ig_steps", "must be >= 0")
        chosen = (self.top_n is not None) + (self.threshold is not None)
        _check(chosen == 1, "top_n", "set exactly one of top_n and threshold (the other null)")
        _check(self.top_n is None or self.top_n > 0, "top_n", "must be > 0")
        _check(self.threshold is None or self.threshold >= 0, "threshold", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    results_dir: str
    save_activations: bool = False
    figures: bool = True
    figures_dir: str = "notebooks/figures"


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    experiment: ExperimentMeta
    model: ModelConfig
    data: DataConfig
    patching: PatchingConfig | None = None
    attribution: AttributionConfig | None = None
    circuit_discovery: CircuitDiscoveryConfig | None = None
    output: OutputConfig

    def __post_init__(self) -> None:
        present = [s for s in ANALYSIS_SECTIONS if getattr(self, s) is not None]
        if len(present) > 1:
            raise _FieldError(present[-1], f"one analysis section per config, got {present}")
        section = self.analysis
        n = self.data.seq_length
        if isinstance(section, PatchingConfig) and section.positions != "all" and n is not None:
            for i, position in enumerate(section.positions):
                _check(
                    -n <= position < n,
                    f"{self.kind}.positions[{i}]",
                    f"{position} is out of range for data.seq_length {n} (-{n}..{n - 1})",
                )

    @property
    def analysis(self) -> Any:
        """The analysis section's config, or None for a baseline."""
        return getattr(self, self.kind, None)

    @property
    def kind(self) -> str:
        """The analysis section present ("patching", ...), or "baseline" if none."""
        return next((s for s in ANALYSIS_SECTIONS if getattr(self, s) is not None), "baseline")


def check_model_fit(
    cfg: ExperimentConfig, path: str | Path, *, n_layers: int, n_heads: int, attn_only: bool
) -> None:
    """Check the analysis section's layers, heads and components against the model, before
    any forward pass; raise ConfigError naming the file and key."""
    section = cfg.analysis
    if not isinstance(section, PatchingConfig):
        return
    try:
        for key, size, what in (("layers", n_layers, "layer"), ("heads", n_heads, "head")):
            values = getattr(section, key)
            for i, value in enumerate(() if values == "all" else values):
                _check(
                    value < size,
                    f"{cfg.kind}.{key}[{i}]",
                    f"{what} {value} is out of range for this model (0..{size - 1})",
                )
        if attn_only and "mlp_out" in section.components:
            i = section.components.index("mlp_out")
            _check(False, f"{cfg.kind}.components[{i}]", "mlp_out: the model has no MLPs")
    except _FieldError as e:
        raise ConfigError(f"{path}: {e}") from None


# --- SAE training schema (names follow SAELens 6 where it has one) -----------------------


@dataclass(frozen=True, kw_only=True)
class HookConfig:
    layer: int
    hook_point: HookPoint = "resid_pre"

    def __post_init__(self) -> None:
        _check(self.layer >= 0, "layer", "must be >= 0")

    @property
    def name(self) -> str:
        """TransformerLens hook name, e.g. ``blocks.8.hook_resid_pre``."""
        return f"blocks.{self.layer}.hook_{self.hook_point}"


@dataclass(frozen=True, kw_only=True)
class SAEDataConfig:
    """The tokens whose activations are cached: ``n_tokens`` for training (the cache is
    ``data/activations/{model}_{layer}_{dataset}_{n_tokens}``; training loops over it) and
    ``n_eval_tokens`` of held-out prompts (another seed, none of the training ones)."""

    dataset: str
    context_size: int
    n_tokens: int | None = None  # tokens cached for training; null: training.n_tokens
    n_eval_tokens: int = 65_536  # held-out tokens for the evaluation
    seed: int = 0
    path: str | None = None
    batch_size: int = 32  # sequences per forward pass while caching
    dtype: Dtype | None = None  # stored dtype of the cache; null: the model's

    def __post_init__(self) -> None:
        _check(self.context_size > 0, "context_size", "must be > 0")
        for key in ("n_tokens", "n_eval_tokens"):
            _check(
                getattr(self, key) is None or getattr(self, key) >= self.context_size,
                key,
                f"must be >= context_size ({self.context_size}): one sequence at least",
            )
        _check(self.seed >= 0, "seed", "must be >= 0")
        _check(self.batch_size > 0, "batch_size", "must be > 0")


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    architecture: SAEArchitecture = "standard"
    expansion_factor: int = 16  # d_sae = expansion_factor * d_in
    k: int | None = None  # active latents per token; topk and batchtopk only
    # Sparsity penalty, standard and jumprelu only: L1 for standard, L0 for jumprelu
    # (SAELens: l1_coefficient / l0_coefficient); ramped up over l1_warm_up_steps.
    l1_coefficient: float = 5.0
    l1_warm_up_steps: int = 0
    # "expected_average_only_in": scale inputs to mean norm sqrt(d_in) while training
    # (folded into the saved weights), so one lr and penalty fit any model's scale.
    normalize_activations: Literal["none", "expected_average_only_in"] = "none"

    def __post_init__(self) -> None:
        _check(self.expansion_factor > 0, "expansion_factor", "must be > 0")
        _check(self.l1_coefficient >= 0, "l1_coefficient", "must be >= 0")
        _check(self.l1_warm_up_steps >= 0, "l1_warm_up_steps", "must be >= 0")
        if self.architecture in ("topk", "batchtopk"):
            _check(self.k is not None, "k", f"required for architecture {self.architecture!r}")
            _check(self.k > 0, "k", "must be > 0")
        else:
            _check(self.k is None, "k", f"not used by architecture {self.architecture!r}")


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    n_tokens: int  # total training tokens (SAELens: training_tokens); loops over the cache
    batch_size: int = 4096  # tokens per step (SAELens: train_batch_size_tokens)
    lr: float = 3e-4
    # Linear warm-up over the first steps, linear decay to 0 over the last ones (both cut
    # to fit when n_tokens // batch_size is smaller, e.g. with --n-tokens).
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "batch_size", "must be > 0")
        _check(self.n_tokens >= self.batch_size, "n_tokens", "must be >= batch_size")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.lr_warm_up_steps >= 0, "lr_warm_up_steps", "must be >= 0")
        _check(self.lr_decay_steps >= 0, "lr_decay_steps", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class SAEOutputConfig:
    results_dir: str


@dataclass(frozen=True, kw_only=True)
class SAETrainingConfig:
    model: ModelConfig
    hook: HookConfig
    data: SAEDataConfig
    sae: SAEConfig
    training: TrainingConfig
    output: SAEOutputConfig


# --- loading ----------------------------------------------------------------------------


def load_config(path: str | Path) -> ExperimentConfig | SAETrainingConfig:
    """Load and validate a YAML config; an ``sae`` section makes it an SAETrainingConfig.

    Raises ConfigError (one line: file, dotted key, what is wanted) for a missing file,
    invalid YAML, unknown/missing keys, wrong types and out-of-range values.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if raw is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {_show(raw)}")
    schema = SAETrainingConfig if "sae" in raw else ExperimentConfig
    try:
        return _build(schema, raw, "")
    except _FieldError as e:
        raise ConfigError(f"{path}: {e}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able dicts and lists (for logs and W&B)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(cfg))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# PyYAML reads "3e-4" (no dot) as a string; float fields accept that spelling.
_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _join(parent: str, key: Any) -> str:
    return f"{parent}.{key}" if parent else str(key)


def _show(value: Any) -> str:
    """A value as the YAML user wrote it, shortened."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(tp: Any) -> str:
    """What a type hint wants, in words."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(map(repr, args))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_describe(args[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {type(None): "null", bool: "true or false", int: "int", float: "float", str: "string"}
    return names[tp]


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the type hint ``tp``; return it (lists become tuples)."""
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # Optional[X]: X's own error is the precise one
            return _convert(arms[0], value, key)
        for arm in arms:
            try:
                return _convert(arm, value, key)
            except _FieldError:
                pass
    elif origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
    elif origin in (list, tuple):
        if isinstance(value, list):
            items = [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif tp is float:
        if isinstance(value, str) and _SCI_FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"config type {tp!r} at {key!r} is not supported by the validator")
    raise _FieldError(key, f"expected {_describe(tp)}, got {_show(value)}")


def _build(cls: type, value: Any, key: str) -> Any:
    """Build dataclass ``cls`` from a YAML mapping, naming any bad key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = ", ".join(fields)
    if not isinstance(value, dict):
        raise _FieldError(key, f"expected a section with keys ({known}), got {_show(value)}")
    for name in value:
        if name not in fields:
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f", did you mean {close[0]!r}?" if close else ""
            raise _FieldError(_join(key, name), f"unknown key{hint} (known: {known})")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            what = "section" if dataclasses.is_dataclass(hints[name]) else "key"
            raise _FieldError(_join(key, name), f"missing required {what}")
    try:
        return cls(**kwargs)
    except _FieldError as e:
        raise _FieldError(_join(key, e.key), e.message) from None

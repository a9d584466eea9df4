"""The shared config schema: typed, validated, frozen pydantic models.

Sections every experiment config has (``experiment``, ``model``, ``data``, ``output``), the
sweep section that patching and attribution share, and the SAE training schema. Each
experiment kind's own section lives in its module (``src/experiments/<kind>.py``), and
``src.experiments.registry.load_config`` assembles and loads them; ``src.utils.validation``
turns a bad value into one line naming the file and the dotted key, e.g.::

    configs/x.yaml: data.n_samples: expected int, got 'ten'

To add a key, add a field to a model: its type hint and ``Field`` constraints are its
validation (strict types: no silent ``"5"`` -> 5 or ``true`` -> 1); checks across keys go in
a ``model_validator`` via ``check``. Copy a config with ``cfg.model_copy(update=...)``
(which skips validation: use ``validate`` for user input).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator

from src.models.hooks import COMPONENTS, RESIDUAL_POINTS, hook_name
from src.utils.validation import ConfigError, FieldError, Float, check

Dtype = Literal["float32", "float16", "bfloat16"]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
# Indices to sweep: a list, or every index.
Indices = tuple[StrictInt, ...] | Literal["all"]
# Keep in sync with src.analysis.metrics.METRICS (a test checks).
MetricName = Literal["logit_diff", "answer_prob", "answer_logprob", "answer_loss"]
HookPoint = Literal[RESIDUAL_POINTS]  # hook points an SAE reads
Component = Literal[tuple(COMPONENTS)]  # what patching and attribution sweep
SAEArchitecture = Literal["standard", "topk", "batchtopk", "jumprelu"]


class Section(BaseModel):
    """A config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_indices(value: Indices, key: str, *, allow_negative: bool = False) -> None:
    if value == "all":
        return
    check(len(value) > 0, key, "expected a non-empty list or 'all'")
    check(allow_negative or min(value) >= 0, key, "indices must be >= 0")


# --- experiment schema ------------------------------------------------------------------


class ExperimentMeta(Section):
    name: StrictStr
    description: StrictStr = ""

    @model_validator(mode="after")
    def _name_is_a_file_name(self) -> ExperimentMeta:
        ok = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name) is not None
        check(ok, "name", "must be usable in a file name (letters, digits, '_', '-', '.')")
        return self


class ModelConfig(Section):
    """The model: a table name, a Hugging Face id or a local checkpoint directory."""

    name: StrictStr
    device: StrictStr = "auto"
    dtype: Dtype = "float32"
    n_devices: PositiveInt = 1  # > 1: split a pretrained model's layers over that many GPUs
    memory_gb: PositiveFloat | None = None  # memory to plan for; None: the device's free memory


class DataConfig(Section):
    dataset: StrictStr
    n_samples: PositiveInt
    seq_length: PositiveInt | None  # null: the dataset's own length (e.g. IOI's templates)
    seed: NonNegativeInt = 0
    path: StrictStr | None = None
    corruption: StrictStr | None = None  # the dataset's own choices; None = its default


class SweepConfig(Section):
    """A sweep over components (``src.models.hooks.COMPONENTS``) at layers, heads and
    positions: the section of activation patching and of attribution patching."""

    layers: Indices = "all"
    heads: Indices = "all"
    positions: Indices = "all"  # negative positions count from the end
    metric: MetricName = "logit_diff"
    components: tuple[Component, ...] = ("head_out",)
    per_position: StrictBool = False  # one patch per (layer, position), not all positions

    @model_validator(mode="after")
    def _check_sweep(self) -> SweepConfig:
        _check_indices(self.layers, "layers")
        _check_indices(self.heads, "heads")
        _check_indices(self.positions, "positions", allow_negative=True)
        check(len(self.components) > 0, "components", "expected a non-empty list")
        return self


class OutputConfig(Section):
    results_dir: StrictStr
    save_activations: StrictBool = False
    figures: StrictBool = True
    figures_dir: StrictStr = "notebooks/figures"


class ExperimentConfig(Section):
    """The sections every experiment config has. The analysis sections, at most one per
    config, are the experiment kinds' own (``src.experiments.registry.experiment_config``
    adds one optional field per kind); the one present names the kind."""

    experiment: ExperimentMeta
    model: ModelConfig
    data: DataConfig
    output: OutputConfig

    @classmethod
    def sections(cls) -> tuple[str, ...]:
        """The analysis sections this schema knows."""
        return tuple(name for name in cls.model_fields if name not in _SHARED_SECTIONS)

    @model_validator(mode="after")
    def _check_analysis(self) -> ExperimentConfig:
        present = [s for s in self.sections() if getattr(self, s) is not None]
        if len(present) > 1:
            raise FieldError(present[-1], f"one analysis section per config, got {present}")
        section, n = self.analysis, self.data.seq_length
        if isinstance(section, SweepConfig) and section.positions != "all" and n is not None:
            for i, position in enumerate(section.positions):
                check(
                    -n <= position < n,
                    f"{self.kind}.positions[{i}]",
                    f"{position} is out of range for data.seq_length {n} (-{n}..{n - 1})",
                )
        return self

    @property
    def analysis(self) -> Any:
        """The analysis section's config, or None for a baseline."""
        return getattr(self, self.kind, None)

    @property
    def kind(self) -> str:
        """The analysis section present ("patching", ...), or "baseline" if none."""
        return next((s for s in self.sections() if getattr(self, s) is not None), "baseline")


_SHARED_SECTIONS = ("experiment", "model", "data", "output")


def check_model_fit(
    cfg: ExperimentConfig, path: str | Path, *, n_layers: int, n_heads: int, attn_only: bool
) -> None:
    """Check the analysis section's layers, heads and components against the model, before
    any forward pass; raise ConfigError naming the file and key."""
    section = cfg.analysis
    if not isinstance(section, SweepConfig):
        return
    for key, size, what in (("layers", n_layers, "layer"), ("heads", n_heads, "head")):
        values = getattr(section, key)
        for i, value in enumerate(() if values == "all" else values):
            if value >= size:
                raise ConfigError(
                    f"{path}: {cfg.kind}.{key}[{i}]: "
                    f"{what} {value} is out of range for this model (0..{size - 1})"
                )
    if attn_only and "mlp_out" in section.components:
        i = section.components.index("mlp_out")
        raise ConfigError(f"{path}: {cfg.kind}.components[{i}]: mlp_out: the model has no MLPs")


# --- SAE training schema (names follow SAELens 6 where it has one) -----------------------


class HookConfig(Section):
    layer: NonNegativeInt
    hook_point: HookPoint = "resid_pre"

    @property
    def name(self) -> str:
        """TransformerLens hook name, e.g. ``blocks.8.hook_resid_pre``."""
        return hook_name(self.hook_point, self.layer)


class SAEDataConfig(Section):
    """The tokens whose activations are cached: ``n_tokens`` for training (the cache is
    ``data/activations/{model}_{layer}_{dataset}_{n_tokens}``; training loops over it) and
    ``n_eval_tokens`` of held-out prompts (none of the training ones).

    Dataset ``text`` reads ``path``: a .txt file (a document per line), a .jsonl file (a
    ``{"text": ...}`` per line), a ``save_to_disk`` directory or a Hugging Face dataset id
    (streamed); null: the model's default dataset (``src/models/families.yaml``)."""

    dataset: StrictStr
    context_size: PositiveInt
    n_tokens: StrictInt | None = None  # tokens cached for training; null: training.n_tokens
    n_eval_tokens: StrictInt = 65_536  # held-out tokens for the evaluation
    seed: NonNegativeInt = 0
    path: StrictStr | None = None  # text source (dataset "text"); null: the model's default
    batch_size: PositiveInt = 32  # sequences per forward pass while caching
    dtype: Dtype | None = None  # stored dtype of the cache; null: the model's

    @model_validator(mode="after")
    def _at_least_one_sequence(self) -> SAEDataConfig:
        for key in ("n_tokens", "n_eval_tokens"):
            check(
                getattr(self, key) is None or getattr(self, key) >= self.context_size,
                key,
                f"must be >= context_size ({self.context_size}): one sequence at least",
            )
        return self


class SAEConfig(Section):
    architecture: SAEArchitecture = "standard"
    expansion_factor: PositiveInt = 16  # d_sae = expansion_factor * d_in
    k: PositiveInt | None = None  # active latents per token; topk and batchtopk only
    # Sparsity penalty, standard and jumprelu only: L1 for standard, L0 for jumprelu
    # (SAELens: l1_coefficient / l0_coefficient); ramped up over l1_warm_up_steps.
    l1_coefficient: Annotated[Float, Field(ge=0)] = 5.0
    l1_warm_up_steps: NonNegativeInt = 0
    # "expected_average_only_in": scale inputs to mean norm sqrt(d_in) while training
    # (folded into the saved weights), so one lr and penalty fit any model's scale.
    normalize_activations: Literal["none", "expected_average_only_in"] = "none"

    @model_validator(mode="after")
    def _k_fits_architecture(self) -> SAEConfig:
        if self.architecture in ("topk", "batchtopk"):
            check(self.k is not None, "k", f"required for architecture {self.architecture!r}")
        else:
            check(self.k is None, "k", f"not used by architecture {self.architecture!r}")
        return self


class TrainingConfig(Section):
    n_tokens: StrictInt  # total training tokens (SAELens: training_tokens); loops over the cache
    batch_size: PositiveInt = 4096  # tokens per step (SAELens: train_batch_size_tokens)
    lr: Annotated[Float, Field(gt=0)] = 3e-4
    # Linear warm-up over the first steps, linear decay to 0 over the last ones (both cut
    # to fit when n_tokens // batch_size is smaller, e.g. with --n-tokens).
    lr_warm_up_steps: NonNegativeInt = 0
    lr_decay_steps: NonNegativeInt = 0

    @model_validator(mode="after")
    def _one_batch_at_least(self) -> TrainingConfig:
        check(self.n_tokens >= self.batch_size, "n_tokens", "must be >= batch_size")
        return self


class SAEOutputConfig(Section):
    results_dir: StrictStr


class SAETrainingConfig(Section):
    model: ModelConfig
    hook: HookConfig
    data: SAEDataConfig
    sae: SAEConfig
    training: TrainingConfig
    output: SAEOutputConfig


# --- plain dicts ------------------------------------------------------------------------


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """A config as plain JSON-able dicts and lists (for logs and W&B): every section, None
    for an absent one, tuples as lists, keys in schema order."""
    return cfg.model_dump(mode="json")

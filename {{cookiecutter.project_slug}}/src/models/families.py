"""The table of model families (`families.yaml`): dimensions, Hugging Face ids and defaults.

Standard library and pyyaml only, no torch: `scripts/update_docs.py` and the project
generator's hook read the table through this module before anything is installed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

FAMILIES_FILE = Path(__file__).with_name("families.yaml")


@dataclass(frozen=True)
class PatchingDefaults:
    """configs/experiment.yaml's model-dependent values: layers to patch, prompts to use."""

    layers: tuple[int, ...]
    n_samples: int
    seq_length: int


@dataclass(frozen=True)
class Family:
    """One row of the table; `families.yaml`'s header says what each field means."""

    name: str
    hf_id: str | None
    n_params: int
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    gated_mlp: bool
    n_ctx: int
    d_vocab: int
    act_fn: str | None
    normalization: str
    positional_embedding: str
    dataset: str | None
    sae_release: str | None
    sae_id: str | None
    patching_defaults: PatchingDefaults

    def bridge_config_kwargs(self) -> dict[str, object]:
        """This architecture as TransformerLens `TransformerBridgeConfig` keywords (a model
        built from them has random weights of this shape)."""
        return {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_ctx": self.n_ctx,
            "d_head": self.d_head,
            "n_heads": self.n_heads,
            "d_vocab": self.d_vocab,
            "d_mlp": self.d_mlp,
            "act_fn": self.act_fn,
            "normalization_type": self.normalization,
            "attn_only": self.d_mlp == 0,
            "positional_embedding_type": self.positional_embedding,
        }

    def weights_gb(self, bytes_per_param: int = 4) -> float:
        """Memory of the weights in GB (float32 by default)."""
        return self.n_params * bytes_per_param / 1e9

    def cache_floats_per_token(self, seq_len: int) -> int:
        """Floats one token adds to a full `run_with_cache` of a TransformerBridge (distinct
        tensors), at sequence length `seq_len`.

        Per block: the LayerNorm outputs (normalized and affine) and scales, attn_out, resid_post
        (and resid_mid, mlp_out with an MLP); q, k, v, z; one attention-pattern row per head; MLP
        pre/post activations. Once: embeddings, the first resid_pre, ln_final and the logits.
        Exact for GPT-2-style blocks on TransformerLens 3.9; close for other architectures.
        """
        d, has_mlp = self.d_model, self.d_mlp > 0
        n_norms = 2 if has_mlp else 1
        block = (
            (2 * n_norms + (4 if has_mlp else 2)) * d
            + n_norms
            + (2 * self.n_heads + 2 * self.n_kv_heads) * self.d_head
            + self.n_heads * seq_len
            + (3 if self.gated_mlp else 2) * self.d_mlp
        )
        once = d + 2 * (d + 1) + (2 * d + 1) + self.d_vocab
        return self.n_layers * block + once


def _family(name: str, row: object, source: Path) -> Family:
    """One table entry as a Family; a missing or unknown key is an error naming both."""
    fields = [f.name for f in dataclasses.fields(Family) if f.name != "name"]
    if not isinstance(row, dict) or set(row) != set(fields):
        keys = set(row) if isinstance(row, dict) else set()
        raise ValueError(
            f"{source}: family {name!r} needs exactly the keys {fields}; "
            f"missing {sorted(set(fields) - keys)}, unknown {sorted(keys - set(fields))}"
        )
    defaults = dict(row["patching_defaults"])
    defaults["layers"] = tuple(defaults["layers"])
    return Family(name=name, **{**row, "patching_defaults": PatchingDefaults(**defaults)})


def load_families(path: Path = FAMILIES_FILE) -> dict[str, Family]:
    """Every family of the table at `path`, by name, in the table's order."""
    table = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return {str(name): _family(str(name), row, Path(path)) for name, row in table.items()}


def family(name: str, path: Path = FAMILIES_FILE) -> Family:
    """The family `name`; an unknown name is a one-line error listing the known ones."""
    families = load_families(path)
    if name not in families:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(families)}")
    return families[name]

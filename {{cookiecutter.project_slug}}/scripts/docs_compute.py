"""The Compute Resources section of CLAUDE.md / AGENTS.md (for ``scripts/update_docs.py``):
the GPU of configs/project.yaml and what a full activation cache of its main model costs there.

Standard library and pyyaml only, like update_docs, which puts this folder and the project
root on ``sys.path`` before importing it.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# The main model and compute (answers at generation), from which the compute section is derived.
PROJECT_FILE = "configs/project.yaml"
FAMILIES_FILE = "src/models/families.yaml"
CACHE_SEQ_LEN = 128  # sequence length of the compute section's activation-cache estimates


def _memory(model: str, gpu_gb: float, weights_gb: float, seq: int, gb_per_1k: float) -> str:
    """What the GPU holds: the float32 weights, and how many tokens of full cache beside them."""
    free_gb = gpu_gb - weights_gb
    if free_gb <= 0:
        return (
            f"{gpu_gb:g} GB cannot hold `{model}`'s {weights_gb:.1f} GB of float32 weights: "
            f"use dtype bfloat16 ({weights_gb / 2:.1f} GB) or a larger GPU"
        )
    tokens = int(free_gb * 0.8 / gb_per_1k * 1000)
    return (
        f"{gpu_gb:g} GB holds `{model}`'s {weights_gb:.2g} GB of float32 weights and a full "
        f"activation cache of about {tokens:,} tokens (batch of ~{max(tokens // seq, 1):,} "
        f"prompts of {seq} tokens) in the remaining memory, keeping 20% headroom"
    )


LAUNCHER_NOTES = {
    "local": "processes on this machine",
    "slurm": "a SLURM job array through submitit; run it on the cluster's login node",
    "modal": "Modal's cloud GPUs; needs `pip install -e '.[modal]'` and `modal token new`",
    "debug": "in one process, one point after another",
}


def _launcher(section: object) -> str:
    """The launcher line: where `scripts/sweep.py` runs a sweep's points by default."""
    section = section if isinstance(section, dict) else {}
    name = str(section.get("name", "local"))
    details = [
        f"{k} {section[k]}" for k in ("partition", "gpus_per_task", "modal_gpu") if section.get(k)
    ]
    return (
        f"- **Launcher**: sweeps (`scripts/sweep.py`) run on `{name}` "
        f"({LAUNCHER_NOTES.get(name, 'unknown launcher')}{'; ' if details else ''}"
        f"{', '.join(details)}), set in `{PROJECT_FILE}` `launcher:`; "
        "`--launcher local|slurm|modal|debug` overrides it."
    )


def compute(root: Path) -> str:
    """Compute Resources: the GPU of configs/project.yaml, and what a full activation cache of
    its main model costs there (dimensions from src/models/families.yaml)."""
    from src.models.families import family

    try:
        project = yaml.safe_load((root / PROJECT_FILE).read_text(encoding="utf-8"))
        model, gpu_gb = str(project["model"]), float(project["gpu_memory_gb"])
        if not 0 < gpu_gb < float("inf"):
            raise ValueError(f"gpu_memory_gb={gpu_gb:g} is not a positive number")
        # a JSON-escaped answer holds characters beyond U+FFFF as surrogate pairs: join them
        where = str(project["compute"]).encode("utf-16", "surrogatepass").decode("utf-16")
        m = family(model, root / FAMILIES_FILE)
    except (OSError, yaml.YAMLError, TypeError, KeyError, ValueError) as error:
        return (
            f"- Not derived: `{PROJECT_FILE}` needs `model` (a family of `{FAMILIES_FILE}`), "
            f"`compute` and `gpu_memory_gb` ({error})."
        )
    seq = min(CACHE_SEQ_LEN, m.n_ctx)
    launcher = _launcher(project.get("launcher"))
    gb_per_1k = m.cache_floats_per_token(seq) * 4 * 1000 / 1e9
    return "\n".join(
        [
            f"- **GPU**: {where} ({gpu_gb:g} GB)",
            f"- **Memory constraints**: {_memory(model, gpu_gb, m.weights_gb(), seq, gb_per_1k)}. "
            "Cache only the hooks you need (`names_filter`) to go further.",
            f"- **Activation caching**: a full cache for `{model}` uses ~{gb_per_1k:.3g} GB per 1k "
            f"tokens at sequence length {seq} (float32; attention patterns grow with seq^2); "
            f"one residual-stream hook uses {m.d_model * 4 * 1000 / 1e6:.2g} MB per 1k tokens.",
            launcher,
        ]
    )

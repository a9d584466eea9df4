"""Finish the generated project: prune, fill CLAUDE.md, git init, notebook stripping, first commit.

Every step is idempotent and a missing tool (git, pre-commit) or a failing step only prints a
warning with the command to run by hand: generation itself always succeeds. Under cruft,
`cruft create` also gets its `.cruft.json` into the first commit, and the throwaway renders of
`cruft update` / `cruft diff` get the files only (no git repository, commit or commit hooks).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")
# The answers' order, which `.cruft.json` keeps (tojson sorts a mapping's keys, not a list).
ANSWER_ORDER = json.loads(r"""{{ cookiecutter.keys() | list | tojson }}""")
PROJECT = Path.cwd()
CRUFT_FILE = ".cruft.json"

# Files that exist only when an answer asks for them: path -> keep?
OPTIONAL_FILES = {
    "AGENTS.md": ANSWERS["multi_agent"] == "yes",
    "LICENSE": ANSWERS["license"] != "none",
}

# Dimensions of the models the prompt offers (n_params counts the weights as loaded).
MODELS = {
    "gpt2-small": dict(
        n_params=124e6,
        n_layers=12,
        d_model=768,
        n_heads=12,
        n_kv_heads=12,
        d_head=64,
        d_mlp=3072,
        gated=False,
        n_ctx=1024,
        d_vocab=50257,
    ),
    "pythia-70m-deduped": dict(
        n_params=70.4e6,
        n_layers=6,
        d_model=512,
        n_heads=8,
        n_kv_heads=8,
        d_head=64,
        d_mlp=2048,
        gated=False,
        n_ctx=2048,
        d_vocab=50304,
    ),
    "gemma-2-2b": dict(
        n_params=2.61e9,
        n_layers=26,
        d_model=2304,
        n_heads=8,
        n_kv_heads=4,
        d_head=256,
        d_mlp=9216,
        gated=True,
        n_ctx=8192,
        d_vocab=256000,
    ),
    "toy-induction": dict(
        n_params=0.05e6,
        n_layers=2,
        d_model=64,
        n_heads=4,
        n_kv_heads=4,
        d_head=16,
        d_mlp=0,
        gated=False,
        n_ctx=32,
        d_vocab=64,
    ),
}
CACHE_SEQ_LEN = 128
FIRST_COMMIT_MESSAGE = "Initial commit from mech-interp-template"


def warn(message: str, command: str) -> None:
    print(f"WARNING: {message}. Run it yourself: {command}", file=sys.stderr)


def prune() -> None:
    """Remove the files of options that were not chosen."""
    for name, keep in OPTIONAL_FILES.items():
        if not keep:
            (PROJECT / name).unlink(missing_ok=True)
    if ANSWERS["ci"] == "none":
        shutil.rmtree(PROJECT / ".github", ignore_errors=True)


def cache_floats_per_token(m: dict, seq_len: int) -> int:
    """Floats one token adds to a full `run_with_cache` of a TransformerBridge (distinct tensors).

    Per block: the LayerNorm outputs (normalized and affine) and scales, attn_out, resid_post
    (and resid_mid, mlp_out with an MLP); q, k, v, z; one attention-pattern row per head; MLP
    pre/post activations. Once: embeddings, the first resid_pre, ln_final and the logits.
    Exact for GPT-2-style blocks on TransformerLens 3.9; close for other architectures.
    """
    d, has_mlp = m["d_model"], m["d_mlp"] > 0
    n_norms = 2 if has_mlp else 1
    block = (
        (2 * n_norms + (4 if has_mlp else 2)) * d
        + n_norms
        + (2 * m["n_heads"] + 2 * m["n_kv_heads"]) * m["d_head"]
        + m["n_heads"] * seq_len
        + (3 if m["gated"] else 2) * m["d_mlp"]
    )
    once = d + 2 * (d + 1) + (2 * d + 1) + m["d_vocab"]
    return m["n_layers"] * block + once


def compute_section(model: str, compute: str, gpu_gb: float) -> str:
    """CLAUDE.md's Compute Resources: the GPU, and what a full activation cache costs on it."""
    m = MODELS[model]
    seq = min(CACHE_SEQ_LEN, m["n_ctx"])
    gb_per_1k = cache_floats_per_token(m, seq) * 4 * 1000 / 1e9
    weights_gb = m["n_params"] * 4 / 1e9
    free_gb = gpu_gb - weights_gb
    if free_gb <= 0:
        memory = (
            f"{gpu_gb:g} GB cannot hold `{model}`'s {weights_gb:.1f} GB of float32 weights: "
            f"use dtype bfloat16 ({weights_gb / 2:.1f} GB) or a larger GPU"
        )
    else:
        tokens = int(free_gb * 0.8 / gb_per_1k * 1000)
        memory = (
            f"{gpu_gb:g} GB holds `{model}`'s {weights_gb:.2g} GB of float32 weights and a full "
            f"activation cache of about {tokens:,} tokens (batch of ~{max(tokens // seq, 1):,} "
            f"prompts of {seq} tokens) in the remaining memory, keeping 20% headroom"
        )
    return "\n".join(
        [
            f"- **GPU**: {compute} ({gpu_gb:g} GB)",
            f"- **Memory constraints**: {memory}. Cache only the hooks you need "
            "(`names_filter`) to go further.",
            f"- **Activation caching**: a full cache for `{model}` uses ~{gb_per_1k:.3g} GB per 1k "
            f"tokens at sequence length {seq} (float32; attention patterns grow with seq^2); "
            f"one residual-stream hook uses {m['d_model'] * 4 * 1000 / 1e6:.2g} MB per 1k tokens.",
        ]
    )


def questions_section(questions: str) -> str:
    """The research questions, numbered in the order given."""
    items = [q.strip() for q in questions.split(";") if q.strip()]
    return "\n".join(f"{i}. {q}" for i, q in enumerate(items, 1))


def fill_docs() -> None:
    """Fill CLAUDE.md's sections derived from the answers, then scripts/update_docs.py's."""
    claude = PROJECT / "CLAUDE.md"
    fills = {
        "<!-- fill:research-questions -->": questions_section(ANSWERS["research_questions"]),
        "<!-- fill:compute -->": compute_section(
            ANSWERS["model_name"], ANSWERS["compute"], float(ANSWERS["gpu_memory_gb"])
        ),
    }
    text = claude.read_text(encoding="utf-8")
    for marker, body in fills.items():
        text = text.replace(marker, body)
    claude.write_text(text, encoding="utf-8")
    try:
        sys.path.insert(0, str(PROJECT / "scripts"))
        import update_docs

        update_docs.update(PROJECT)
    except Exception as error:  # a doc refresh must never fail generation
        warn(
            f"could not fill CLAUDE.md's generated sections ({error})",
            "python scripts/update_docs.py",
        )


def cruft_mode() -> str:
    """How cruft runs this hook: "create", "update" (a throwaway render), or "" (not cruft).

    cruft adds the template's commit to the answers as `_commit` (plain cookiecutter does not).
    `cruft update` and `cruft diff` render the old and the new template version into fresh
    `tempfile.TemporaryDirectory()` folders, `<system temp>/tmpXXXXXXXX/<slug>`, and diff them;
    cruft passes no other sign, so a project alone in such a folder counts as one of those.
    """
    if "_commit" not in ANSWERS:
        return ""
    parent = PROJECT.resolve().parent
    throwaway = (
        re.fullmatch(r"tmp[a-z0-9_]{8}", parent.name) is not None
        and parent.parent == Path(tempfile.gettempdir()).resolve()
        and [p.name for p in parent.iterdir()] == [PROJECT.name]
    )
    return "update" if throwaway else "create"


def write_cruft_file() -> None:
    """Write `.cruft.json` as `cruft create` will once this hook returns, so the first commit
    holds it and cruft's own write changes nothing. cruft's `--checkout`, `--directory` and
    `--skip` are not visible here: with those, cruft's file differs and shows as a change."""
    state = {
        "template": ANSWERS["_template"],
        "commit": ANSWERS["_commit"],
        "checkout": None,
        "context": {"cookiecutter": {key: ANSWERS[key] for key in ANSWER_ORDER}},
        "directory": None,
    }
    text = json.dumps(state, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n"
    (PROJECT / CRUFT_FILE).write_text(text)  # cruft's json_dumps and write_text, byte for byte


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=PROJECT, capture_output=True, text=True, check=check)


def inside_work_tree() -> bool:
    return git("rev-parse", "--is-inside-work-tree", check=False).stdout.strip() == "true"


def init_git() -> bool:
    """`git init -b main` unless already in a work tree; True when this project is its own repo."""
    if inside_work_tree():
        return git("rev-parse", "--show-toplevel").stdout.strip() == str(PROJECT.resolve())
    result = git("init", "-b", "main", check=False)
    if result.returncode != 0:  # git older than 2.28 has no -b
        git("init", check=False)
        git("symbolic-ref", "HEAD", "refs/heads/main", check=False)
    return inside_work_tree()


def install_pre_commit() -> None:
    """Install the commit hooks: before a commit, strip notebook outputs (nbstripout), lint and
    guard data/; after it, refresh the generated sections of CLAUDE.md and AGENTS.md."""
    exe = shutil.which("pre-commit")
    if exe is None:
        warn(
            "pre-commit is not on PATH, so notebook outputs will not be stripped at commit",
            "pip install pre-commit && pre-commit install",
        )
        return
    result = subprocess.run([exe, "install"], cwd=PROJECT, capture_output=True, text=True)
    if result.returncode != 0:
        warn(
            f"pre-commit install failed: {result.stderr.strip() or result.stdout.strip()}",
            "pre-commit install",
        )


def first_commit() -> None:
    """One commit holding exactly the template's output, unless the repo already has one."""
    if git("rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode == 0:
        return
    identity = []
    for key, answer in (("user.name", "author_name"), ("user.email", "author_email")):
        if not git("config", key, check=False).stdout.strip():
            identity += ["-c", f"{key}={ANSWERS[answer]}"]
    git("add", "--all")
    result = git(*identity, "commit", "--no-verify", "-m", FIRST_COMMIT_MESSAGE, check=False)
    if result.returncode != 0:
        warn(
            f"the first commit failed: {result.stderr.strip()}",
            f'git add --all && git commit -m "{FIRST_COMMIT_MESSAGE}"',
        )


def main() -> None:
    prune()
    fill_docs()
    mode = cruft_mode()
    if mode == "update":
        print(
            "cruft is rendering into a temporary folder (update or diff): "
            "no git repository, commit or commit hooks there",
            file=sys.stderr,
        )
        return
    if mode == "create":
        write_cruft_file()
    if shutil.which("git") is None:
        warn(
            "git is not on PATH: no repository, commit hook or first commit",
            "git init -b main && pre-commit install && git add --all && git commit",
        )
        return
    try:
        if not init_git():
            return  # generated inside another repository: leave its history alone
        first_commit()  # before the hooks are installed: none runs on the template's output
        install_pre_commit()
    except (OSError, subprocess.CalledProcessError) as error:
        warn(f"git setup stopped ({error})", "git init -b main && pre-commit install")


if __name__ == "__main__":
    main()

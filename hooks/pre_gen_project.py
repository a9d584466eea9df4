"""Validate the answers before anything is written.

A bad answer exits with one line naming the prompt and what is wanted;
cookiecutter then removes the half-made output folder.
"""

import datetime
import json
import re
import sys

# Every answer, as JSON, so quotes, backslashes and unicode in answers stay intact.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

SLUG = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
# Imports a project folder or distribution of that name would shadow or replace
# (`pip install -e .` of a project named `torch` uninstalls torch): the project's own package,
# its main dependencies, and the standard library of the Python running this.
SHADOWED = {
    "src",
    "torch",
    "transformer_lens",
    "sae_lens",
    "transformers",
    "datasets",
    "einops",
    "numpy",
    "safetensors",
    "yaml",
    "pydantic",
    "tqdm",
    "matplotlib",
    "scipy",
    "circuitsvis",
    "wandb",
    "pytest",
} | set(getattr(sys, "stdlib_module_names", ()))
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def problems(answers: dict[str, str]) -> list[str]:
    """Return one line per invalid answer, naming the prompt and what it wants."""
    found = []
    for key in ("project_name", "research_goal", "author_name", "compute"):
        if not str(answers[key]).strip():
            found.append(f"{key}: must not be empty")
    if not any(q.strip() for q in str(answers["research_questions"]).split(";")):
        found.append("research_questions: give at least one question (separate several with ';')")
    slug = str(answers["project_slug"])
    module = slug.replace("-", "_")
    if slug.strip() in ("", "_"):  # "_": cookiecutter.json's default for a name without a slug
        found.append(
            f"project_slug: project_name {answers['project_name']!r} gives an empty slug (no "
            "letters or digits); want a project_slug such as 'induction-heads', or a name with "
            "letters"
        )
    elif not SLUG.match(slug):
        found.append(
            f"project_slug: {slug!r} is not a valid folder name; want lowercase letters and "
            "digits, words joined by '-' or '_', starting with a letter (e.g. 'induction-heads')"
        )
    elif module in SHADOWED:
        found.append(
            f"project_slug: {slug!r} would shadow the module `{module}` (a folder or package "
            f"of that name hides or replaces it); want another name, e.g. '{slug}-study'"
        )
    email = str(answers["author_email"])
    if not EMAIL.match(email):
        found.append(f"author_email: {email!r} is not an email address; want name@host.tld")
    gpu = str(answers["gpu_memory_gb"]).strip()
    try:
        ok = float(gpu) > 0 and float(gpu) != float("inf")
    except ValueError:
        ok = False
    if not ok:
        found.append(f"gpu_memory_gb: {gpu!r} is not a positive number of GB; want e.g. 24 or 12.5")
    created = str(answers.get("date_created", ""))
    try:
        datetime.date.fromisoformat(created)
        ok = bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", created))
    except ValueError:
        ok = False
    if not ok:
        found.append(f"date_created: {created!r} is not a date; want YYYY-MM-DD, e.g. 2025-06-01")
    return found


if __name__ == "__main__":
    errors = problems(ANSWERS)
    for line in errors:
        print(f"ERROR: {line}", file=sys.stderr)
    sys.exit(1 if errors else 0)

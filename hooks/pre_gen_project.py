"""Validate the answers before anything is written.

A bad answer exits with one line naming the prompt and what is wanted;
cookiecutter then removes the half-made output folder.
"""

import json
import re
import sys

# Every answer, as JSON, so quotes, backslashes and unicode in answers stay intact.
ANSWERS = json.loads(r"""{{ cookiecutter | tojson }}""")

SLUG = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
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
    if not SLUG.match(slug):
        found.append(
            f"project_slug: {slug!r} is not a valid folder name; want lowercase letters and "
            "digits, words joined by '-' or '_', starting with a letter (e.g. 'induction-heads')"
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
    return found


if __name__ == "__main__":
    errors = problems(ANSWERS)
    for line in errors:
        print(f"ERROR: {line}", file=sys.stderr)
    sys.exit(1 if errors else 0)

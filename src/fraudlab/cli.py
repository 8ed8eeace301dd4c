"""``fraudlab <verb>``: one command line for everything that is not a DVC stage.

Each verb's module is imported only when that verb runs, so ``fraudlab verify`` does not load the
web framework and ``fraudlab serve`` does not load DVC. ``fraudlab VERB --help`` shows a verb's
options. The pipeline's stages are run by DVC (``dvc repro``), not from here.
"""

from __future__ import annotations

import importlib
import sys
from typing import NamedTuple

from fraudlab.core.runner import missing_library, run


class Verb(NamedTuple):
    module: str
    function: str
    summary: str


VERBS = {
    "serve": Verb(
        "fraudlab.serving.server", "serve", "score transactions over an authenticated REST API"
    ),
    "search": Verb(
        "fraudlab.experiments.search", "search", "queue a hyperparameter search; the leaderboard"
    ),
    "report": Verb(
        "fraudlab.experiments.report", "report", "the model report for a pull request (Markdown)"
    ),
    "compare": Verb(
        "fraudlab.experiments.compare", "compare", "a challenger against the committed model"
    ),
    "results": Verb(
        "fraudlab.experiments.results", "results", "write the results page from the metrics"
    ),
    "monitor": Verb(
        "fraudlab.monitoring.status", "monitor", "the latest monitoring verdict, week by week"
    ),
    "registry": Verb(
        "fraudlab.registry.commands",
        "registry",
        "model versions and stages as Git tags: register, promote, show, fetch",
    ),
    "verify": Verb(
        "fraudlab.integrity.verify",
        "verify_repo",
        "re-hash DVC's cache and outputs against dvc.lock",
    ),
    "check-reproducible": Verb(
        "fraudlab.integrity.reproducibility",
        "check_reproducible",
        "prove that a fresh clone reproduces the committed results",
    ),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"  {name:<{width}}  {verb.summary}" for name, verb in VERBS.items()]
    return "\n".join(
        [
            "usage: fraudlab VERB [options]   (fraudlab VERB --help for a verb's options)",
            "",
            "verbs:",
            *lines,
            "",
            "The pipeline itself runs with `dvc repro`; see README.md and docs/.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """The ``fraudlab`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(usage())
        sys.exit(0 if args else 2)
    if args[0] not in VERBS:
        print(f"fraudlab: unknown verb {args[0]!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    verb = VERBS[args[0]]
    try:
        module = importlib.import_module(verb.module)
    except ModuleNotFoundError as exc:
        print(f"fraudlab {args[0]}: {missing_library(exc)}", file=sys.stderr)
        sys.exit(1)
    run(getattr(module, verb.function), args[1:])

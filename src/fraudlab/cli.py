"""What every stage script shares: logging, signals, and turning known errors into exit codes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable

from fraudlab.errors import UserError

log = logging.getLogger("fraudlab")

# Errors caused by the user's data or params: reported in one line, no traceback.
_USER_ERRORS = (UserError, FileNotFoundError)


def _raise_system_exit(signum: int, _frame: object) -> None:
    # Turn SIGTERM into an exception so atomic writers remove their temporaries.
    raise SystemExit(128 + signum)


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    return parser


def run(stage: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main function as a process: configure logging once, map errors to exits.
    ``argv`` defaults to the process's arguments."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        stage(argv)
    except _USER_ERRORS as exc:
        log.error("%s failed: %s", stage.__name__, exc)
        sys.exit(1)

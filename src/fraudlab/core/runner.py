"""What every stage script shares: logging, signals, and turning known errors into exit codes."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from collections.abc import Callable

from fraudlab.core.errors import UserError

log = logging.getLogger("fraudlab")

# Errors caused by the user's data or params: reported in one line, no traceback.
_USER_ERRORS = (UserError, FileNotFoundError)
# Errors of the machine rather than of the code: also one line, saying what to free or raise.
_RESOURCE_ERRNOS = {
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free space within your disk quota",
    errno.EFBIG: "raise the file size limit (ulimit -f) or free space",
    errno.EROFS: "write to a writable file system",
    errno.EACCES: "fix the permissions",
}


def _raise_system_exit(signum: int, _frame: object) -> None:
    # Turn SIGTERM into an exception so atomic writers remove their temporaries.
    raise SystemExit(128 + signum)


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    return parser


# what `fraudlab[serve]` installs (pyproject.toml), by import name; anything else is the pipeline's
_SERVE_MODULES = {"fastapi", "starlette", "uvicorn", "httptools", "uvloop", "orjson",
                  "prometheus_client", "redis", "hiredis"}  # fmt: skip


def missing_library(exc: ModuleNotFoundError) -> str:
    """What to install when an extra's library is missing (an install of ``fraudlab[serve]``
    running a pipeline command, or the reverse)."""
    top = (exc.name or "").split(".")[0]
    extra = "serve" if top in _SERVE_MODULES else "pipeline"
    return (
        f"the library {top!r} is not installed; this command needs fraudlab[{extra}]: "
        f"pip install -c requirements.lock 'fraudlab[{extra}]' (or the Quickstart's install)"
    )


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
    except ModuleNotFoundError as exc:
        log.error("%s failed: %s", stage.__name__, missing_library(exc))
        sys.exit(1)
    except _USER_ERRORS as exc:
        log.error("%s failed: %s", stage.__name__, exc)
        sys.exit(1)
    except OSError as exc:
        if exc.errno not in _RESOURCE_ERRNOS:
            raise
        # The atomic writers have already removed their temporaries: nothing half-written.
        log.error(
            "%s failed: %s; nothing was written: %s and rerun",
            stage.__name__,
            exc,
            _RESOURCE_ERRNOS[exc.errno],
        )
        sys.exit(1)

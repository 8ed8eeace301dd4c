"""Test library shared by test modules (imported, never collected)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from fraudlab.cli import run


def run_stage(stage: Callable, argv: list[str], caplog) -> int:
    """Exit status of a stage run in this process the way its module's __main__ runs it; its
    log lands in ``caplog``."""
    handler = signal.getsignal(signal.SIGTERM)
    caplog.clear()
    caplog.set_level(logging.INFO)
    try:
        run(stage, argv)
    except SystemExit as exc:
        return int(exc.code)
    finally:
        signal.signal(signal.SIGTERM, handler)
    return 0


class Payload:
    """A pickle that runs a command when loaded, as an attacker's model file would: it creates
    ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))

"""File I/O at the edges of the stages: atomic, deterministic writers and plain readers.

Every writer goes through a temporary sibling that is renamed into place only once it is
complete, so an interrupted stage never leaves a file (or directory) that looks finished.
Temporary names start with a dot and contain ``.tmp-`` (ignored by Git and by DVC outputs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

_TMP_MARK = ".tmp-"


def _remove_stale_temporaries(target: Path) -> None:
    """Remove temporaries left by an earlier run of this writer that was killed (SIGKILL)."""
    for stale in target.parent.glob(f".{target.name}{_TMP_MARK}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it onto ``target`` when the block succeeds.

    On any exception (including KeyboardInterrupt and the SystemExit raised on SIGTERM) the
    temporary is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    tmp = target.with_name(f".{target.name}{_TMP_MARK}{os.getpid()}")
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if directory and target.exists():
            # A directory cannot be renamed over a non-empty one; between these two calls
            # the target is absent, never half-written.
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_parquet(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` without its index; bytes depend only on the data and library versions."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=1_000_000)


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    return pd.read_parquet(path, columns=columns)


def write_json(data: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_joblib(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        joblib.dump(obj, tmp)

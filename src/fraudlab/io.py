"""File I/O at the edges of the stages: atomic, deterministic writers and plain readers.

Every writer goes through a temporary that is moved into place only once it is complete, so an
interrupted stage never leaves a file (or directory) that looks finished. On Linux a file is
written as an unnamed file (O_TMPFILE) and linked into place at the end: a writer killed with
SIGKILL leaves nothing behind at all, which matters when the next `dvc repro` restores the stage
from DVC's run cache and runs nothing that could clean up. Elsewhere, and for directories, the
temporary is a sibling whose name starts with a dot and contains ``.tmp-`` (ignored by Git);
the next write of the same target removes one left by a killed writer.
"""

from __future__ import annotations

import contextlib
import errno
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


_PROC_FDS = Path("/proc/self/fd")
# What open() says when a file system or kernel cannot make unnamed files.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}


def _open_unnamed(directory: Path) -> int | None:
    """A writable file in ``directory`` with no name (Linux O_TMPFILE), or None where the
    platform or file system has none. The kernel frees it if the process dies."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not _PROC_FDS.is_dir():
        return None
    try:
        return os.open(directory, flag | os.O_WRONLY, 0o666)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None
        raise


def _link_into_place(fd: int, target: Path) -> None:
    """Give the unnamed file ``fd`` the name ``target``, replacing any file there atomically
    (a name beside it exists only between the link and the rename)."""
    linked = target.with_name(f".{target.name}{_TMP_MARK}{os.getpid()}")
    linked.unlink(missing_ok=True)
    fds = os.open(_PROC_FDS, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names the open file itself.
        os.link(str(fd), linked, src_dir_fd=fds, follow_symlinks=True)
    finally:
        os.close(fds)
    os.replace(linked, target)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path for ``target``; move it onto ``target`` when the block succeeds.

    On any exception (including KeyboardInterrupt and the SystemExit raised on SIGTERM) the
    temporary is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    fd = None if directory else _open_unnamed(target.parent)
    if fd is not None:
        try:
            yield _PROC_FDS / str(fd)  # writers open it by this path, in this process
            _link_into_place(fd, target)
        finally:
            os.close(fd)
        return
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

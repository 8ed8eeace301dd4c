"""Trust in DVC-tracked files: a file is what ``dvc.lock`` says it is, or it is not used.

A pickle (joblib) runs code while it loads, so a model file is hashed and compared with the hash
``dvc.lock`` records for it *before* it is unpickled: a file swapped in the workspace, or in
DVC's cache and checked out from there (DVC does not rehash its cache), is refused and its
payload never runs. The hash is DVC's own: the MD5 of the file's bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from fraudlab.core.errors import UserError
from fraudlab.core.io import read_yaml

_CHUNK = 1 << 20


class IntegrityError(UserError):
    """A tracked file is missing, unrecorded, or differs from the hash dvc.lock records."""


@dataclass(frozen=True)
class LockedOutput:
    stage: str
    path: str  # relative to the directory of dvc.lock, as DVC writes it
    md5: str  # a directory's ends in ".dir"
    cached: bool  # False for outputs declared ``cache: false`` (metrics in Git)


def file_md5(path: str | Path) -> str:
    """DVC's hash of a file: the MD5 of its bytes."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _outputs_of(stage: str, entries: list[dict], declared: dict[str, bool]) -> list[LockedOutput]:
    return [
        LockedOutput(
            stage=stage,
            path=entry["path"],
            md5=entry["md5"],
            cached=declared.get(entry["path"], True),
        )
        for entry in entries
        if "md5" in entry
    ]


def _declared_caching(dvc_yaml: dict) -> dict[str, bool]:
    """Output path -> whether DVC caches it, from dvc.yaml's outs, metrics and plots."""
    caching: dict[str, bool] = {}
    for stage in (dvc_yaml.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind) or []:
                if isinstance(out, dict):
                    (path, options), *_ = out.items()
                    caching[path] = (options or {}).get("cache", True)
                else:
                    caching[str(out)] = True
    return caching


def locked_outputs(lock: dict, dvc_yaml: dict | None = None) -> list[LockedOutput]:
    """Every output ``dvc.lock`` records, with the stage that produced it."""
    declared = _declared_caching(dvc_yaml or {})
    return [
        out
        for name, stage in (lock.get("stages") or {}).items()
        for out in _outputs_of(name, stage.get("outs") or [], declared)
    ]


def read_lock(lock_path: str | Path) -> dict:
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        raise IntegrityError(f"{lock_path} not found: run `dvc repro` to record what it produces")
    return read_yaml(lock_path) or {}


def recorded(path: str | Path, *, lock_path: str | Path) -> LockedOutput:
    """The dvc.lock entry of the file at ``path``."""
    root = Path(lock_path).resolve().parent
    target = Path(path).resolve()
    for out in locked_outputs(read_lock(lock_path)):
        if (root / out.path).resolve() == target:
            return out
    raise IntegrityError(
        f"{path}: not an output recorded in {lock_path}, so its origin cannot be checked; "
        "refusing to load it (run `dvc repro` to produce it)"
    )


def _require_md5(actual: str, entry: LockedOutput, *, source: str, origin: str) -> None:
    """Refuse a file whose MD5 is not the one ``entry`` records (``origin``: which dvc.lock,
    for the message)."""
    if actual != entry.md5:
        raise IntegrityError(
            f"{source}: MD5 {actual} differs from {entry.md5} recorded by stage {entry.stage} in "
            f"{origin}; refusing to unpickle a file that is not the one DVC produced. Run "
            f"`dvc repro {entry.stage}` (and `fraudlab verify` in case DVC's cache is "
            "damaged)"
        )


def content_md5(content: bytes) -> str:
    return hashlib.md5(content, usedforsecurity=False).hexdigest()


def verify_file(
    path: str | Path, *, lock_path: str | Path, content: bytes | None = None
) -> LockedOutput:
    """Check that ``path`` holds the bytes dvc.lock records for it (or, given ``content``, that
    those bytes read from it are); the entry, or IntegrityError."""
    entry = recorded(path, lock_path=lock_path)
    if content is None and not Path(path).is_file():
        raise IntegrityError(
            f"{path}: missing (recorded by stage {entry.stage} in {lock_path}): run "
            f"`dvc checkout {entry.path}` or `dvc repro {entry.stage}`"
        )
    actual = file_md5(path) if content is None else content_md5(content)
    _require_md5(actual, entry, source=str(path), origin=str(lock_path))
    return entry


def load_verified_pickle(path: str | Path, *, lock_path: str | Path) -> Any:
    """Unpickle ``path`` only after its hash matches dvc.lock; a file that then fails to load
    (truncated, not a pickle) is a one-line error, not a traceback. The bytes hashed are the
    bytes unpickled: the file is read once, so swapping it after the check changes nothing."""
    entry = recorded(path, lock_path=lock_path)  # an unrecorded path is refused before it is read
    if not Path(path).is_file():
        verify_file(path, lock_path=lock_path)  # says which stage to rerun
    return unpickle_checked(Path(path).read_bytes(), entry, source=str(path), origin=str(lock_path))


def unpickle_checked(content: bytes, entry: LockedOutput, *, source: str, origin: str) -> Any:
    """The one way fraudlab unpickles: ``content`` (read once) only after its MD5 matches the
    dvc.lock ``entry`` it claims to be, from the workspace or from a commit's lock. A failure to
    load is a one-line error."""
    _require_md5(content_md5(content), entry, source=source, origin=origin)
    try:
        return joblib.load(io.BytesIO(content))
    # any unpickling failure means the same to the user: the file is not a model
    except Exception as exc:
        raise IntegrityError(
            f"{source}: not a loadable model file ({type(exc).__name__}: {exc}); "
            "rerun the stage that writes it"
        ) from None


def check_dvc_status(lock: Path, stages: list[str]) -> None:
    """Refuse outputs that ``dvc status`` reports out of date (changed code, params or data)."""
    command = [sys.executable, "-m", "dvc", "status", "--json", *stages]
    done = subprocess.run(
        command, cwd=lock.resolve().parent, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise IntegrityError(
            f"`dvc status` failed in {lock.resolve().parent}: {done.stderr.strip()[-300:]} "
            "(pass --no-dvc-status to serve outside a DVC repository)"
        )
    changed = json.loads(done.stdout or "{}")
    if changed:
        raise IntegrityError(
            f"`dvc status` reports changes in stage(s) {', '.join(sorted(changed))}: the "
            "outputs are not what the current code, params and data produce; run `dvc repro` "
            "(and commit dvc.lock) before serving"
        )

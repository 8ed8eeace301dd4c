"""Re-hash DVC's cache and the workspace outputs against dvc.lock and the .dvc files.

    fraudlab verify            # exit 1 if any cached object or output is damaged

DVC trusts its cache: a cache file whose bytes changed (a flipped bit, a hand edit) with its
mtime kept is restored by `dvc checkout` and reported up to date by `dvc status`. This command
hashes every cache object that dvc.lock and the .dvc files point to (a directory's listing and
each of its files) and every workspace output, and reports each mismatch with the stage (or
.dvc file) that produced it. An object missing from the cache is reported, not counted as
damage (a fresh clone without a remote has none).

Repair a damaged object: remove it from the cache (`chmod u+w` it first: DVC makes cache files
read-only), then rebuild it with `dvc repro` (or `dvc repro --force <stage>` when the stage looks
up to date), or fetch it with `dvc pull` from a remote; `dvc checkout --force` then restores the
workspace copy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fraudlab.core.errors import UserError
from fraudlab.core.io import read_yaml
from fraudlab.integrity.lock import LockedOutput, file_md5, locked_outputs, read_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One file to hash: ``path`` must have MD5 ``md5``."""

    kind: str  # "cache" or "workspace"
    path: Path
    md5: str
    origin: str  # the stage or .dvc file that produced it, and the output path


@dataclass(frozen=True)
class Finding:
    check: Check
    status: str  # "ok", "damaged", "missing"
    actual: str | None = None


def object_path(cache: Path, md5: str) -> Path:
    """Where DVC 3 keeps the object of a hash (``.dir`` for a directory's listing)."""
    return cache / md5[:2] / md5[2:]


def dvc_file_outputs(root: Path) -> list[LockedOutput]:
    """Outputs recorded by .dvc files (`dvc add`, `dvc import-db`), paths relative to root."""
    outputs = []
    for dvc_file in sorted(root.rglob("*.dvc")):
        if ".dvc" in dvc_file.relative_to(root).parts[:-1] or not dvc_file.is_file():
            continue
        recorded = read_yaml(dvc_file) or {}
        for out in recorded.get("outs") or []:
            if "md5" in out:
                path = (dvc_file.parent / out["path"]).relative_to(root).as_posix()
                name = dvc_file.relative_to(root).as_posix()
                outputs.append(
                    LockedOutput(
                        stage=name,
                        path=path,
                        md5=out["md5"],
                        cached=out.get("cache", True),
                    )
                )
    return outputs


def _directory_entries(listing: Path) -> list[dict]:
    return json.loads(listing.read_text(encoding="utf-8"))


def directory_md5(path: Path, *, files: Iterable[Path] | None = None) -> str:
    """DVC's hash of a directory: the MD5 of its listing (each file's MD5 and relative path,
    ordered by path components) as DVC serialises it. ``files``: those DVC does not ignore
    (default: every file)."""
    files = sorted(
        (p for p in path.rglob("*") if p.is_file()) if files is None else files,
        key=lambda p: p.relative_to(path).parts,
    )
    entries = [{"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()} for p in files]
    return hashlib.md5(
        json.dumps(entries, sort_keys=True).encode(), usedforsecurity=False
    ).hexdigest()


def plan(outputs: list[LockedOutput], *, root: Path, cache: Path) -> list[Check]:
    """Every cache object and workspace file the outputs point to, each once. A directory's
    listing is read (it names the objects of its files) only once its own hash is right,
    so this reads listings: call it after nothing else writes the cache."""
    checks: list[Check] = []
    for out in outputs:
        origin = f"{out.path} (stage {out.stage})"
        directory = out.md5.endswith(".dir")
        md5 = out.md5.removesuffix(".dir")
        if out.cached:
            checks.append(Check("cache", object_path(cache, out.md5), md5, origin))
        if not directory:
            checks.append(Check("workspace", root / out.path, md5, origin))
            continue
        listing = object_path(cache, out.md5)
        if not (listing.is_file() and file_md5(listing) == md5):
            # Not cached (e.g. `cache: false` plots) or a damaged listing (reported above):
            # hash the workspace directory as a whole.
            checks.append(Check("workspace", root / out.path, md5, origin))
        else:
            for entry in _directory_entries(listing):
                inner = f"{out.path}/{entry['relpath']} (stage {out.stage})"
                checks.append(Check("cache", object_path(cache, entry["md5"]), entry["md5"], inner))
                checks.append(
                    Check("workspace", root / out.path / entry["relpath"], entry["md5"], inner)
                )
    unique: dict[tuple[str, Path], Check] = {}
    for check in checks:
        unique.setdefault((check.kind, check.path), check)
    return list(unique.values())


def _digest(path: Path) -> str | None:
    """The MD5 DVC records for a file or a directory; None when there is nothing there."""
    if path.is_dir():
        return directory_md5(path)
    return file_md5(path) if path.is_file() else None


def _same_file_key(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def verify(checks: list[Check], *, jobs: int) -> list[Finding]:
    """Hash every file (a workspace file that is a link to its cache object is hashed once)."""
    by_inode: dict[tuple[int, int] | None, list[Check]] = {}
    for check in checks:
        key = _same_file_key(check.path)
        by_inode.setdefault(key if key is not None else (id(check), -1), []).append(check)
    # hashlib releases the GIL on large buffers, so threads use every core.
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        digests = list(pool.map(_digest, [group[0].path for group in by_inode.values()]))
    return [
        Finding(
            check,
            "missing" if digest is None else "ok" if digest == check.md5 else "damaged",
            digest,
        )
        for digest, group in zip(digests, by_inode.values(), strict=True)
        for check in group
    ]


def tree_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def describe(finding: Finding) -> str:
    check = finding.check
    if finding.status == "missing":
        return f"{check.kind} {check.path}: missing, for {check.origin}"
    return (
        f"{check.kind} {check.path}: MD5 {finding.actual}, expected {check.md5}, for {check.origin}"
    )


def cache_dir(root: Path) -> Path:
    """DVC's local cache of MD5-addressed files, wherever the config puts it."""
    from dvc.repo import Repo  # imported here: costs half a second

    with Repo(str(root)) as repo:
        return Path(repo.cache.local.path)


def verify_repo(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fraudlab verify", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="repository root (default: .)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="files hashed at once"
    )
    args = parser.parse_args(argv)
    root = Path(args.repo).resolve()
    dvc_yaml = read_yaml(root / "dvc.yaml")
    outputs = locked_outputs(read_lock(root / "dvc.lock"), dvc_yaml) + dvc_file_outputs(root)
    cache = cache_dir(root)
    started = time.perf_counter()
    checks = plan(outputs, root=root, cache=cache)
    findings = verify(checks, jobs=args.jobs)
    seconds = time.perf_counter() - started
    hashed = [f for f in findings if f.status != "missing"]
    megabytes = sum(tree_size(f.check.path) for f in hashed) / 1e6
    for finding in findings:
        if finding.status == "missing":
            log.info("%s", describe(finding))
    damaged = [f for f in findings if f.status == "damaged"]
    log.info(
        "hashed %d files, %.1f MB in %.2f s (%.0f MB/s); %d missing, %d damaged",
        len(hashed),
        megabytes,
        seconds,
        megabytes / seconds if seconds else 0.0,
        len(findings) - len(hashed),
        len(damaged),
    )
    if damaged:
        raise UserError(
            f"{len(damaged)} damaged file(s):\n  "
            + "\n  ".join(describe(f) for f in damaged)
            + "\nRepair: remove each damaged cache object (chmod u+w, then rm), rebuild it with "
            "`dvc repro` (`--force <stage>` if the stage looks up to date) or fetch it with "
            "`dvc pull`, then `dvc checkout --force`. A damaged workspace file alone: "
            "`dvc checkout --force <path>`."
        )

"""Files as a commit has them: Git-tracked text from ``git show``, DVC-tracked bytes through
``dvc.api`` (DVC's cache, else its remote), each checked against that commit's ``dvc.lock``
before anything uses them.

A revision a user types reaches git as one argument after ``--end-of-options``, never a shell.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from fraudlab.core.errors import UserError
from fraudlab.core.io import parse_yaml
from fraudlab.integrity.lock import IntegrityError, LockedOutput, content_md5, locked_outputs

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def git(repo: str | Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, check=False)


def resolve_commit(revision: str, *, repo: str | Path = ".", what: str = "revision") -> str:
    """The commit a revision names (a branch, tag, HEAD~1, a hash), or a UserError."""
    done = git(
        repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{revision}^{{commit}}"
    )
    commit = done.stdout.decode().strip()
    if done.returncode != 0 or not _COMMIT.match(commit):
        raise UserError(f"{what} {revision!r}: not a commit of the repository at {repo}")
    return commit


def git_show(commit: str, path: str, *, repo: str | Path = ".") -> bytes:
    """The bytes of a Git-tracked file at ``commit``."""
    done = git(repo, "show", f"{commit}:{path}")
    if done.returncode != 0:
        raise UserError(f"{path} is not committed at {commit[:7]}: {done.stderr.decode().strip()}")
    return done.stdout


def committed_lock(commit: str, *, repo: str | Path = ".") -> list[LockedOutput]:
    """Every output ``dvc.lock`` records at ``commit``."""
    return locked_outputs(parse_yaml(git_show(commit, "dvc.lock", repo=repo).decode()) or {})


def locked_entry(outputs: list[LockedOutput], path: str, *, commit: str) -> LockedOutput:
    entry = next((out for out in outputs if out.path == path), None)
    if entry is None:
        raise IntegrityError(f"{path} is not recorded in dvc.lock at {commit[:7]}")
    return entry


def committed_output(commit: str, entry: LockedOutput, *, repo: str | Path = ".") -> bytes:
    """The bytes of a DVC-tracked output at ``commit``, refused unless their MD5 is the one that
    commit's ``dvc.lock`` records (``entry``)."""
    import dvc.api  # heavy; only the commands that read other commits need it

    try:
        content = dvc.api.read(entry.path, repo=str(repo), rev=commit, mode="rb")
    except Exception as exc:  # DVC raises many kinds; all mean the bytes are not reachable
        raise UserError(
            f"{entry.path} at {commit[:7]} (MD5 {entry.md5}) is neither in DVC's cache nor in a "
            f"reachable remote: run `dvc fetch --rev {commit[:7]}` ({type(exc).__name__}: {exc})"
        ) from None
    actual = content_md5(content)
    if actual != entry.md5:
        raise IntegrityError(
            f"{entry.path} at {commit[:7]}: MD5 {actual} differs from {entry.md5} recorded in "
            "that commit's dvc.lock; DVC's cache or remote holds other bytes under that hash "
            "(run `fraudlab verify`)"
        )
    return content

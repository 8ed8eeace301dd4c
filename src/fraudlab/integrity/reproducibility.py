"""Check that a fresh clone reproduces the committed results bit for bit.

    fraudlab check-reproducible                  # this commit, reference params
    fraudlab check-reproducible --override tests/tiny_params.yaml   # ~1 minute

Clones the repository (committed state only: uncommitted changes are not checked), runs
`dvc repro` with an empty DVC cache, and fails unless `dvc.lock` and every metrics file come out
identical to the committed ones and a second `dvc repro` has nothing to do. With ``--override``
(a YAML of params values, e.g. a tiny configuration) there is no committed result for those
params, so it first produces and commits one in a clone, then checks that a fresh clone of that
reproduces it: the same check, on a configuration small enough for every CI run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fraudlab.core.errors import UserError
from fraudlab.core.io import dump_yaml, read_yaml

log = logging.getLogger(__name__)


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied key by key, nested sections merged."""
    merged = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = merge(base[key], value) if nested else value
    return merged


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", "fraudlab-check")
        env.setdefault(f"GIT_{role}_EMAIL", "check@fraudlab.invalid")
    env.pop("DVC_EXP_NAME", None)
    return env


def _run(cwd: Path, *args: str) -> str:
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(f"`{' '.join(args)}` failed in {cwd}:\n{done.stdout}{done.stderr}")
    return done.stdout


def _clone(source: Path, target: Path, rev: str) -> None:
    commit = _run(source, "git", "rev-parse", "--verify", f"{rev}^{{commit}}").strip()
    _run(target.parent, "git", "clone", "-q", "--no-local", str(source), str(target))
    _run(target, "git", "checkout", "-q", commit)


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` ran, from its output."""
    return [
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    ]


def _repro(repo: Path) -> list[str]:
    """Run `dvc repro`; the stages it ran."""
    return stages_run(_run(repo, "dvc", "repro"))


def _differences(repo: Path) -> str:
    """What the run changed in committed files, and DVC's view; '' when nothing."""
    changed = _run(repo, "git", "status", "--porcelain")
    status = subprocess.run(
        ["dvc", "status", "-q"], cwd=repo, env=_env(), capture_output=True, check=False
    )
    if not changed and status.returncode == 0:
        return ""
    metrics = _run(repo, "dvc", "metrics", "diff", "--md")
    return f"changed files:\n{changed}\n{_run(repo, 'git', 'diff', '--stat')}\n{metrics}"


def _commit_reference(repo: Path, overrides: dict) -> None:
    """Apply the params overrides and commit the results they produce in ``repo``."""
    params = repo / "params.yaml"
    params.write_text(dump_yaml(merge(read_yaml(params), overrides)))
    _run(repo, "git", "commit", "-qam", "check_reproducible: params override")
    started = time.perf_counter()
    _repro(repo)
    log.info("reference run with the override: %.0f s", time.perf_counter() - started)
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "check_reproducible: reference results")


def check(source: Path, rev: str, overrides: dict | None, workdir: Path) -> None:
    if _run(source, "git", "status", "--porcelain", "--untracked-files=no"):
        log.warning("uncommitted changes in %s are not part of the check", source)
    origin = source
    if overrides is not None:
        origin = workdir / "reference"
        _clone(source, origin, rev)
        _commit_reference(origin, overrides)
        rev = "HEAD"
    fresh = workdir / "fresh"
    _clone(origin, fresh, rev)
    started = time.perf_counter()
    ran = _repro(fresh)
    log.info(
        "fresh clone: dvc repro ran %d stages in %.0f s", len(ran), time.perf_counter() - started
    )
    differences = _differences(fresh)
    if differences:
        raise UserError(f"a fresh clone did not reproduce the committed results:\n{differences}")
    again = _repro(fresh)
    if again:
        raise UserError(f"a second dvc repro was not a no-op: it ran {again}")
    log.info("reproduced: dvc.lock and metrics identical, second repro a no-op")


def check_reproducible(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fraudlab check-reproducible", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repo", default=".", help="repository to clone (default: .)")
    parser.add_argument("--rev", default="HEAD", help="commit to check (default: HEAD)")
    parser.add_argument("--override", help="YAML of params values to apply first")
    parser.add_argument("--keep", action="store_true", help="keep the clones for inspection")
    args = parser.parse_args(argv)
    overrides = read_yaml(args.override) if args.override else None
    workdir = Path(tempfile.mkdtemp(prefix="fraudlab-check-"))
    try:
        check(Path(args.repo).resolve(), args.rev, overrides, workdir)
    finally:
        if args.keep:
            log.info("clones kept in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

"""``fraudlab registry``: versions and stages of the model as Git tags (GTO's convention).

    fraudlab registry register                 # HEAD's model as the next version
    fraudlab registry promote v1.2.0 prod      # assign a stage (also to roll back)
    fraudlab registry show                     # versions, stages, MD5s, test metrics, commits
    fraudlab registry fetch prod --out DIR     # a version's served files, hash-checked

Tags are made by GTO and stay local until pushed (``git push origin --tags``, or ``--push``).
Registering refuses a workspace that is not what HEAD records: ``dvc status`` must be clean, and
dvc.lock, dvc.yaml and params.yaml committed. Fetching reads the files through ``dvc.api`` (DVC's
cache, else the remote) and checks them against the commit's dvc.lock, which must agree with the
MD5s recorded in the version's tag.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fraudlab.core.io import atomic_path, parse_yaml, write_json
from fraudlab.integrity.committed import (
    committed_lock,
    committed_output,
    git,
    git_show,
    locked_entry,
    resolve_commit,
)
from fraudlab.integrity.lock import LockedOutput, check_dvc_status, file_md5, locked_outputs
from fraudlab.registry.tags import (
    ARTIFACT,
    MODEL,
    SERVED,
    Registry,
    RegistryError,
    Tag,
    Version,
    check_record,
    read_registry,
    record_message,
    resolve,
)

log = logging.getLogger(__name__)

METRICS = "metrics/evaluate/metrics.json"
_TEST_METRICS = ("auc_roc", "average_precision", "card_precision_at_100")
_COMMITTED = ("dvc.lock", "dvc.yaml", "params.yaml")
_FIELDS = ("%(refname:strip=2)", "%(objecttype)", "%(*objectname)", "%(objectname)",
           "%(taggerdate:iso-strict)", "%(contents)")  # fmt: skip


# --- I/O: Git ---------------------------------------------------------------------------------


def repo_root(path: str | Path) -> Path:
    done = git(path, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise RegistryError(f"{path}: not inside a Git repository")
    return Path(done.stdout.decode().strip())


def read_tags(root: Path) -> list[Tag]:
    """The artifact's tags: name, the commit each points at, annotation, date."""
    done = git(root, "for-each-ref", f"--format={'%1f'.join(_FIELDS)}%1e", f"refs/tags/{ARTIFACT}*")
    tags = []
    for record in done.stdout.decode().split("\x1e"):
        if not record.strip():
            continue
        name, kind, peeled, target, created, contents = record.lstrip("\n").split("\x1f")
        # a lightweight tag's "contents" is its commit's message: never a registration record
        message = contents.strip() if kind == "tag" else ""
        tags.append(Tag(name, peeled or target, message, created))
    return tags


def load_registry(root: Path) -> Registry:
    return read_registry(read_tags(root))


def served_md5s(outputs: list[LockedOutput]) -> dict[str, str]:
    """The served files' MD5s among a dvc.lock's outputs."""
    return {entry.path: entry.md5 for entry in outputs if entry.path in SERVED}


def locked_md5s(root: Path, commit: str) -> dict[str, str]:
    return served_md5s(committed_lock(commit, repo=root))


def checked(root: Path, version: Version) -> Version:
    """``version``, once its tag's record agrees with its commit's dvc.lock."""
    check_record(version, locked_md5s(root, version.commit))
    return version


def test_metrics(root: Path, commit: str) -> dict:
    try:
        return json.loads(git_show(commit, METRICS, repo=root)).get("test", {})
    except ValueError:  # not committed there, or not JSON: shown as blanks
        return {}


# --- register and promote -----------------------------------------------------------------------


@contextlib.contextmanager
def _gto_errors() -> Iterator[None]:
    """GTO's refusals (a version that is not SemVer, a stage name it does not allow, a failed
    push) as one-line errors."""
    from gto.exceptions import GTOException

    try:
        yield
    except GTOException as exc:
        raise RegistryError(f"GTO refused: {exc}") from None


def _require_committed_workspace(root: Path) -> tuple[str, dict[str, str]]:
    """HEAD, once the workspace is what it records, and the served files' MD5s at HEAD."""
    changed = git(root, "status", "--porcelain", "--", *_COMMITTED).stdout.decode().strip()
    if changed:
        raise RegistryError(
            f"uncommitted changes to {', '.join(_COMMITTED)}:\n{changed}\ncommit them (a "
            "version is a commit) and register again"
        )
    head = resolve_commit("HEAD", repo=root)
    locked = locked_md5s(root, head)
    missing = [path for path in SERVED if path not in locked]
    if missing:
        raise RegistryError(f"dvc.lock at HEAD records no {', '.join(missing)}: run `dvc repro`")
    check_dvc_status(root / "dvc.lock", [])
    for path in SERVED:
        actual = file_md5(root / path) if (root / path).is_file() else "missing"
        if actual != locked[path]:
            raise RegistryError(
                f"{path}: MD5 {actual} in the workspace differs from {locked[path]} in dvc.lock "
                "at HEAD; run `dvc checkout` (or `dvc repro`) before registering"
            )
    return head, locked


def register(
    repo: str | Path = ".",
    *,
    version: str | None = None,
    bump: str | None = None,
    note: str | None = None,
    push: bool = False,
) -> Version:
    """Register HEAD's model as a version of ``fraud-model``."""
    import gto.api  # only the registry's writers need GTO's Git plumbing

    root = repo_root(repo)
    head, md5s = _require_committed_workspace(root)
    registry = load_registry(root)
    already = [v for v in registry.versions.values() if v.commit == head]
    if already:
        raise RegistryError(f"HEAD ({head[:7]}) is already {ARTIFACT} {already[0].version}")
    with _gto_errors():
        gto.api.register(
            str(root), ARTIFACT, head, version=version, message=record_message(md5s, note),
            bump_major=bump == "major", bump_minor=bump == "minor", bump_patch=bump == "patch",
            push=push,
        )  # fmt: skip
    made = next(v for v in load_registry(root).versions.values() if v.commit == head)
    log.info("registered %s %s at %s (model MD5 %s)", ARTIFACT, made.version, head[:7],
             md5s[MODEL])  # fmt: skip
    return made


def promote(
    version: str, stage: str, repo: str | Path = ".", *, note: str | None = None, push: bool = False
) -> str:
    """Assign ``stage`` to ``version`` (a new ``#stage#N`` tag); the tag's name."""
    import gto.api

    root = repo_root(repo)
    registry = load_registry(root)
    target, _ = resolve(registry, version)
    checked(root, target)
    current = registry.stages.get(stage)
    if current is not None and current.version == target.version and not current.removed:
        raise RegistryError(f"{ARTIFACT} {target.version} is already in {stage} ({current.tag})")
    # force: GTO refuses a version that held the stage before (a rollback) without it
    with _gto_errors():
        gto.api.assign(
            str(root), ARTIFACT, stage, version=target.version, message=note, force=True, push=push
        )
    tag = load_registry(root).stages[stage].tag
    log.info("%s %s is now in %s (%s)", ARTIFACT, target.version, stage, tag)
    return tag


# --- show ---------------------------------------------------------------------------------------


def _integrity(root: Path, version: Version) -> str:
    try:
        checked(root, version)
    except RegistryError as exc:
        return f"REFUSED: {exc}"
    return "ok"


def _fmt(value: object) -> str:
    return "" if value is None else f"{value:.3f}"


def show_rows(root: Path) -> list[dict[str, str]]:
    """One row per version, newest first."""
    registry = load_registry(root)
    rows = []
    for version in reversed(registry.versions.values()):
        test = test_metrics(root, version.commit)
        rows.append(
            {
                "version": version.version,
                "stages": ", ".join(registry.stages_of(version.version)),
                "model MD5": version.md5s.get(MODEL, ""),
                "test AUC ROC / AP / CP@100": " / ".join(_fmt(test.get(k)) for k in _TEST_METRICS),
                "commit": version.commit[:7],
                "registered": version.created,
                "record": _integrity(root, version),
            }
        )
    return rows


# --- fetch --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetched:
    directory: Path
    version: Version
    stage: str | None

    @property
    def model(self) -> Path:
        return self.directory / MODEL

    @property
    def lock(self) -> Path:
        return self.directory / "dvc.lock"


def fetch(ref: str, out: str | Path, repo: str | Path = ".") -> Fetched:
    """Write the served files of the version ``ref`` names into ``out``: see fetch_version."""
    root = repo_root(repo)
    version, stage = resolve(load_registry(root), ref)
    return fetch_version(root, version, stage, out)


def fetch_version(root: Path, version: Version, stage: str | None, out: str | Path) -> Fetched:
    """Write ``version``'s served files into ``out`` (with that commit's dvc.lock and a
    ``registry.json``), each checked against the commit's dvc.lock and the version's record
    first; ``out`` is replaced whole or left as it was."""
    lock = git_show(version.commit, "dvc.lock", repo=root)  # read once: checked, then written
    outputs = locked_outputs(parse_yaml(lock.decode()) or {})
    check_record(version, served_md5s(outputs))
    contents = {
        path: committed_output(
            version.commit, locked_entry(outputs, path, commit=version.commit), repo=root
        )
        for path in SERVED
    }
    out = Path(out)
    if out.exists() and not (out / "registry.json").is_file():
        raise RegistryError(f"{out} exists and is not a fetched version: name another --out")
    with atomic_path(out, directory=True) as tmp:
        (tmp / "dvc.lock").write_bytes(lock)
        for path, content in contents.items():
            (tmp / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp / path).write_bytes(content)
        write_json(
            {
                "artifact": ARTIFACT,
                "version": version.version,
                "stage": stage,
                "commit": version.commit,
                "model_md5": version.md5s[MODEL],
            },
            tmp / "registry.json",
        )
    named = f"{version.version} ({stage})" if stage else version.version
    log.info("fetched %s %s (commit %s, model MD5 %s) into %s", ARTIFACT, named,
             version.commit[:7], version.md5s[MODEL], out)  # fmt: skip
    return Fetched(out, version, stage)


# --- command line -------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fraudlab registry", description="Versions and stages of the model as Git tags."
    )
    p.add_argument("--repo", default=".", help="the Git repository (%(default)s)")
    verbs = p.add_subparsers(dest="verb", required=True)
    reg = verbs.add_parser("register", help="register HEAD's model as a new version")
    reg.add_argument("--version", help="e.g. v1.2.0 (default: the next patch version)")
    reg.add_argument("--bump", choices=["major", "minor", "patch"], help="which part to raise")
    reg.add_argument("-m", "--message", help="a note kept in the tag")
    reg.add_argument("--push", action="store_true", help="push the tag to origin")
    pro = verbs.add_parser("promote", help="assign a stage to a version (also to roll back)")
    pro.add_argument("version", help="e.g. v1.2.0")
    pro.add_argument("stage", help="e.g. staging, prod")
    pro.add_argument("-m", "--message", help="a note kept in the tag")
    pro.add_argument("--push", action="store_true", help="push the tag to origin")
    sho = verbs.add_parser("show", help="versions, stages, MD5s, test metrics, commits")
    sho.add_argument("--json", action="store_true", help="JSON instead of a Markdown table")
    fet = verbs.add_parser("fetch", help="a version's served files, hash-checked, into a directory")
    fet.add_argument("ref", help="a stage (prod), a version (v1.2.0), or a tag")
    fet.add_argument("--out", required=True, help="directory to write (replaced whole)")
    return p


def registry(argv: list[str] | None = None) -> None:
    from fraudlab.experiments.tables import markdown_table

    args = parser().parse_args(argv)
    if args.verb == "register":
        register(args.repo, version=args.version, bump=args.bump, note=args.message,
                 push=args.push)  # fmt: skip
    elif args.verb == "promote":
        promote(args.version, args.stage, args.repo, note=args.message, push=args.push)
    elif args.verb == "fetch":
        fetch(args.ref, args.out, args.repo)
    else:
        rows = show_rows(repo_root(args.repo))
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(markdown_table(rows) if rows else f"no version of {ARTIFACT} is registered")

"""The model registry read from Git tags (GTO's convention), as pure functions.

``fraud-model@v1.2.0`` registers the commit it points at as version v1.2.0;
``fraud-model#prod#3`` is the third assignment of stage ``prod``, to the version registered on
the commit it points at; ``!`` marks a deregistration (``@v1.2.0!``) or an unassignment
(``#prod!#4``). A stage holds the version of its highest-numbered assignment: the counter, not
the tag's timestamp, orders assignments, so two promotions within one second (GTO's timestamps
are whole seconds) still resolve one way.

A version tag made by ``fraudlab registry register`` is annotated with the MD5 of each served
file, as the commit's ``dvc.lock`` recorded it then. A tag moved to another commit, or rewritten
over one whose files differ, no longer agrees with that commit's ``dvc.lock`` and is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import semver
from gto.api import parse_tag
from gto.constants import Action
from gto.exceptions import InvalidTagName

from fraudlab.core.errors import UserError

ARTIFACT = "fraud-model"
# what a version is: the files the service reads, beside the dvc.lock that records them
SERVED = ("models/model.joblib", "models/serving.json", "models/reference_profile.json")
MODEL = SERVED[0]
_RECORD = re.compile(r"^md5 (?P<path>\S+) (?P<md5>[0-9a-f]{32})$", re.MULTILINE)


class RegistryError(UserError):
    """A registry reference that does not resolve, or a version whose record does not hold."""


@dataclass(frozen=True)
class Tag:
    """A Git tag as ``git for-each-ref`` lists it."""

    name: str
    commit: str  # the commit it points at (peeled)
    message: str  # empty for a lightweight tag
    created: str  # the tagger's date, ISO 8601 (empty for a lightweight tag)


@dataclass(frozen=True)
class Version:
    version: str
    commit: str
    tag: str
    created: str
    md5s: dict[str, str] = field(default_factory=dict)  # served path -> MD5 at registration


@dataclass(frozen=True)
class Assignment:
    stage: str
    counter: int
    tag: str
    commit: str
    version: str | None  # None: unassigned, or no version is registered at ``commit``
    removed: bool = False  # an unassignment


@dataclass(frozen=True)
class Registry:
    versions: dict[str, Version]  # in SemVer order
    stages: dict[str, Assignment]  # each stage's latest assignment
    assignments: tuple[Assignment, ...]  # all of them

    def stages_of(self, version: str) -> list[str]:
        return sorted(s for s, a in self.stages.items() if a.version == version and not a.removed)


def record_message(md5s: dict[str, str], note: str | None = None) -> str:
    """The annotation of a version tag: one ``md5 PATH HASH`` line per served file."""
    lines = [f"{ARTIFACT}: the model and serving files of this commit"]
    lines += [f"md5 {path} {md5s[path]}" for path in SERVED]
    return "\n".join([*lines, *([note] if note else [])])


def recorded_md5s(message: str) -> dict[str, str]:
    return {m["path"]: m["md5"] for m in _RECORD.finditer(message)}


def _parsed(tag: Tag) -> dict | None:
    try:
        parsed = parse_tag(tag.name)
    except InvalidTagName:
        return None
    return parsed if parsed.get("name") == ARTIFACT else None


def _sorted_versions(versions: dict[str, Version]) -> dict[str, Version]:
    return dict(sorted(versions.items(), key=lambda item: semver.Version.parse(item[0][1:])))


def read_registry(tags: list[Tag]) -> Registry:
    """The registry the tags describe."""
    versions: dict[str, Version] = {}
    dropped: set[str] = set()
    moves: list[tuple[dict, Tag]] = []
    for tag in tags:
        parsed = _parsed(tag)
        if parsed is None:
            continue
        action = parsed["action"]
        if action == Action.REGISTER:
            versions[parsed["version"]] = Version(
                parsed["version"], tag.commit, tag.name, tag.created, recorded_md5s(tag.message)
            )
        elif action == Action.DEREGISTER:
            dropped.add(parsed["version"])
        elif action in (Action.ASSIGN, Action.UNASSIGN):
            moves.append((parsed, tag))
    versions = _sorted_versions({v: e for v, e in versions.items() if v not in dropped})
    by_commit: dict[str, str] = {}
    for version in versions.values():  # SemVer order: the highest version on a commit wins
        by_commit[version.commit] = version.version
    assignments = tuple(
        Assignment(
            stage=parsed["stage"],
            counter=parsed.get("counter") or 0,
            tag=tag.name,
            commit=tag.commit,
            version=None if removed else by_commit.get(tag.commit),
            removed=removed,
        )
        for parsed, tag in moves
        for removed in [parsed["action"] == Action.UNASSIGN]
    )
    stages: dict[str, Assignment] = {}
    for move in sorted(assignments, key=lambda a: a.counter):
        stages[move.stage] = move
    return Registry(versions, dict(sorted(stages.items())), assignments)


def _assignment(registry: Registry, ref: str) -> Assignment | None:
    """The assignment ``ref`` names: a stage (its latest) or one assignment tag."""
    if ref in registry.stages:
        return registry.stages[ref]
    stage = ref.removeprefix(f"{ARTIFACT}#")
    if stage in registry.stages and "#" not in stage:
        return registry.stages[stage]
    return next((a for a in registry.assignments if a.tag == ref), None)


def resolve(registry: Registry, ref: str) -> tuple[Version, str | None]:
    """The version ``ref`` names, and the stage it was named by (if any). ``ref``: a version
    (``v1.2.0``, ``fraud-model@v1.2.0``), a stage (``prod``, ``fraud-model#prod``), or one
    assignment tag (``fraud-model#prod#3``, what a deploy triggered by that tag deploys)."""
    version = ref.removeprefix(f"{ARTIFACT}@")
    if version in registry.versions:
        return registry.versions[version], None
    move = _assignment(registry, ref)
    if move is None:
        known = ", ".join([*registry.versions, *registry.stages]) or "nothing registered yet"
        raise RegistryError(f"{ref!r}: no such version or stage of {ARTIFACT} ({known})")
    if move.removed:
        raise RegistryError(f"{ref!r}: stage {move.stage} was unassigned by {move.tag}")
    if move.version is None:
        raise RegistryError(
            f"{ref!r}: {move.tag} points at commit {move.commit[:7]}, where no version of "
            f"{ARTIFACT} is registered; refusing to serve an unregistered commit"
        )
    return registry.versions[move.version], move.stage


def check_record(version: Version, locked: dict[str, str]) -> None:
    """Refuse a version whose tag does not record the served files' MD5s, or whose commit's
    ``dvc.lock`` (``locked``: path -> MD5) records others: the tag was moved or rewritten."""
    if not version.md5s:
        raise RegistryError(
            f"{version.tag} records no MD5 of the served files (a lightweight tag, or one not "
            "made by `fraudlab registry register`); refusing a version whose files cannot be "
            "checked"
        )
    for path in SERVED:
        if version.md5s.get(path) != locked.get(path):
            raise RegistryError(
                f"{version.tag} was registered with {path} MD5 {version.md5s.get(path)}, but "
                f"the commit it now points at ({version.commit[:7]}) records "
                f"{locked.get(path)} in dvc.lock: the tag was moved or rewritten; refusing it"
            )

"""What ships: the install extras cover what each side imports, and the deploy workflow runs the
scripts CI runs."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIPELINE_ONLY = {"bokeh", "dask", "distributed", "dvc", "dvclive", "gto", "matplotlib", "pandera",
                 "sqlalchemy", "tabulate", "vl-convert-python"}  # fmt: skip


def _requirements(group: str) -> list[Requirement]:
    listed = PROJECT["dependencies"] if group == "base" else PROJECT["optional-dependencies"][group]
    return [Requirement(text) for text in listed]


def _closure(requirements: list[Requirement]) -> set[str]:
    """The installed distributions ``requirements`` pull in, transitively (this platform)."""
    seen: set[str] = set()
    pending = [(r, tuple(r.extras)) for r in requirements]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        if name == "fraudlab":
            continue
        if name not in seen:
            seen.add(name)
        for text in metadata.requires(name) or []:
            nested = Requirement(text)
            environments = [{**default_environment(), "extra": e} for e in ("", *extras)]
            wanted = nested.marker is None or any(nested.marker.evaluate(e) for e in environments)
            if wanted and canonicalize_name(nested.name) not in seen:
                pending.append((nested, tuple(nested.extras)))
    return seen


_BLOCKER = """
import importlib.abc, importlib.metadata, json, re, sys
allowed = set(json.loads(sys.argv[1]))
owners = importlib.metadata.packages_distributions()
canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()
class Uninstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        owned = owners.get(name.split(".")[0], [])
        if owned and not any(canonical(d) in allowed | {"fraudlab"} for d in owned):
            raise ModuleNotFoundError(f"No module named {name!r} (not installed)", name=name)
sys.meta_path.insert(0, Uninstalled())
for module in sys.argv[2:]:
    importlib.import_module(module)
print(json.dumps(sorted(sys.modules)))
"""


def _import_with_only(allowed: set[str], *modules: str) -> set[str]:
    """Import ``modules`` in a fresh interpreter where only the ``allowed`` distributions (and
    the standard library) can be imported, as in an environment that installed just those; the
    distributions they loaded (beyond what the interpreter's start loads, e.g. setuptools' path
    hook). An optional import of anything else fails as it would there."""
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKER, json.dumps(sorted(allowed)), *modules],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    tops = {name.split(".")[0] for name in json.loads(done.stdout)}
    owners = metadata.packages_distributions()
    loaded = {canonicalize_name(d) for top in tops for d in owners.get(top, [])}
    return loaded - {"fraudlab"} - (_import_with_only(allowed) if modules else set())


def test_every_declared_dependency_is_pinned_in_the_lock():
    pinned = {
        canonicalize_name(line.split("==")[0].split("[")[0])
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line
    }
    declared = [*_requirements("base"), *_requirements("serve"), *_requirements("pipeline")]
    assert {canonicalize_name(r.name) for r in declared} <= pinned


@pytest.mark.slow  # two fresh interpreters importing the whole stack
def test_the_serve_extra_covers_what_the_service_imports_and_nothing_of_the_pipeline():
    """The image installs the base and `serve` requirements only: everything `fraudlab serve`
    loads (with a Redis store) must come from them, and none of the pipeline's libraries."""
    serving = _closure([*_requirements("base"), *_requirements("serve")])
    imported = _import_with_only(
        serving, "fraudlab.cli", "fraudlab.serving.server", "fraudlab.serving.app",
        "fraudlab.serving.redis_store", "fraudlab.serving.scorer", "fraudlab.serving.health",
    )  # fmt: skip
    assert imported <= serving
    assert serving & PIPELINE_ONLY == set()


@pytest.mark.slow
def test_the_pipeline_extra_covers_what_the_stages_and_commands_import():
    pipeline = _closure([*_requirements("base"), *_requirements("pipeline")])
    imported = _import_with_only(
        pipeline,
        "fraudlab.stages.train", "fraudlab.stages.validate", "fraudlab.stages.evaluate",
        "fraudlab.stages.monitor", "fraudlab.experiments.compare", "fraudlab.registry.commands",
        "dvc.api", "gto.api", "fraudlab.scaleout.engine",
    )  # fmt: skip
    assert imported <= pipeline


def _workflow() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())


def test_the_deploy_workflow_runs_on_stage_tags_only():
    workflow = _workflow()
    # PyYAML reads the key `on` as True (YAML 1.1)
    patterns = workflow[True]["push"]["tags"]
    matches = lambda tag: any(fnmatch.fnmatchcase(tag, p) for p in patterns)  # noqa: E731
    assert matches("fraud-model#prod#3")
    assert not matches("fraud-model@v1.2.0")
    (job,) = workflow["jobs"].values()
    assert "!contains(github.ref_name, '!')" in job["if"]  # an unassignment deploys nothing


def test_the_deploy_workflow_runs_the_scripts_ci_runs():
    (job,) = _workflow()["jobs"].values()
    runs = [step.get("run", "") for step in job["steps"]]
    assert any("bash .ci/run" in run for run in runs)  # all of CI, the container test included
    fetch = next(i for i, run in enumerate(runs) if "fraudlab registry fetch" in run)
    release = next(i for i, run in enumerate(runs) if "bash .ci/release build/served" in run)
    assert fetch < release
    assert "--out build/served" in runs[fetch]
    # CI and the release set Docker up the same way and build with the same script
    ci = (ROOT / ".ci" / "run").read_text()
    release_script = (ROOT / ".ci" / "release").read_text()
    assert ". .ci/docker-setup" in ci
    assert ". .ci/docker-setup" in release_script
    assert "tests/test_container.py" in release_script
    assert '".ci" / "build-image"' in (ROOT / "tests" / "test_container.py").read_text()
    # untrusted text (the tag's name) reaches commands through the environment only
    assert not any("${{" in run for run in runs)
    push = next(step for step in job["steps"] if "docker push" in step.get("run", ""))
    assert push["if"] == "${{ env.IMAGE_REGISTRY != '' }}"
    assert json.dumps(job["env"]).count("secrets.IMAGE_REGISTRY") == 1

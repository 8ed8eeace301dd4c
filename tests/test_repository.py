"""The repository's promises to a fresh clone: the Quickstart, CI's entry point, pinned installs."""

from __future__ import annotations

import re
from pathlib import Path

from fraudlab.integrity.lock import file_md5
from fraudlab.integrity.verify import directory_md5
from test_params import ROOT


def _quickstart_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, flags=re.DOTALL)
    assert block, "README's Quickstart has no fenced code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_is_two_commands_install_and_repro_then_tests():
    install, tests = _quickstart_lines()
    assert install.endswith("dvc repro")
    assert "requirements.lock" in install
    assert "python -m pytest && " in tests
    # then a fresh clone must reproduce a tiny configuration bit for bit
    assert tests.endswith("fraudlab check-reproducible --override tests/tiny_params.yaml")
    assert "requirements-dev.lock" in tests


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quickstart_lines()[1] in ci


def test_every_dependency_is_pinned_exactly():
    for name in ("requirements.lock", "requirements-dev.lock"):
        for line in (ROOT / name).read_text().splitlines():
            if line and not line.startswith(("#", "-r ")):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^=\s]+", line), f"{name}: {line}"
    runtime = (ROOT / "requirements.lock").read_text()
    for package in ("dvc==", "dvclive==", "scikit-learn==", "xgboost-cpu==", "pandas=="):
        assert package in runtime


def test_no_param_value_reaches_a_shell_command():
    """DVC runs each cmd through a shell: a ${param} pasted there (a file name with a space,
    $(...), backticks or ;) would split or run. Params are read by the stages themselves."""
    import yaml

    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        assert "${" not in stage["cmd"], f"stage {name} interpolates a param into its command"


def test_the_stage_benchmark_runs_commands_without_a_shell(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from stages import command_argv

    argv, env = command_argv(
        "PYTHONPATH=src python -m fraudlab.stages.x --out 'a b;$(touch PWNED).csv'", {"A": "1"}
    )
    assert argv == ["python", "-m", "fraudlab.stages.x", "--out", "a b;$(touch PWNED).csv"]
    assert env == {"A": "1", "PYTHONPATH": "src"}


def test_the_pull_request_workflow_runs_the_tested_script():
    """The workflow's reproduce-and-report step is the script the e2e test runs."""
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "pull-request.yml").read_text())
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any("bash .github/scripts/pull-request-report.sh" in run for run in runs)
    assert any("bash .ci/run" in run for run in runs)  # the tests, on every pull request
    assert not any("fraudlab report" in run or "plots diff" in run for run in runs)


def _code_md5(path: Path) -> str | None:
    """DVC's hash of a code dep: a file's MD5, or a directory's listing hash over the files
    .dvcignore keeps (bytecode left out); None when it is missing."""
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        return None
    files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return directory_md5(path, files=files) + ".dir"


def test_dvc_lock_records_the_committed_code_and_params():
    """dvc.lock must be up to date in every commit: a code or params change committed without
    `dvc repro` makes a fresh clone rerun stages and change dvc.lock (the full-size
    reproducibility check would fail). Code and params need no data to compare."""
    from ruamel.yaml import YAML

    # YAML 1.2, as DVC reads and writes these files (PyYAML would read its unquoted `yes` as True)
    yaml = YAML(typ="safe", pure=True)
    lock = yaml.load((ROOT / "dvc.lock").read_text())
    params = yaml.load((ROOT / "params.yaml").read_text())
    stale = []
    for name, stage in lock["stages"].items():
        for dep in stage.get("deps", []):
            if dep["path"].startswith("src/") and _code_md5(ROOT / dep["path"]) != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
        for section, value in stage.get("params", {}).get("params.yaml", {}).items():
            if params.get(section) != value:
                stale.append(f"{name}: params {section}")
    assert not stale, f"dvc.lock is stale (run dvc repro and commit it): {stale}"

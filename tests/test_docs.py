"""The guide holds: short README, pasteable YAML, no history in user docs, links that resolve,
figures written from the committed metrics, commands that exist."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from fraudlab.cli import VERBS
from fraudlab.core.io import dump_yaml, parse_yaml, read_yaml
from fraudlab.core.params import SECTIONS, load_params
from fraudlab.experiments.results import results
from fraudlab.modeling.span import span_needed

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_YAML_BLOCK = re.compile(r"^( *)```yaml\n(.*?)^\1```", flags=re.MULTILINE | re.DOTALL)


def _yaml_blocks(page: Path) -> list[str]:
    return [textwrap.dedent(body) for _indent, body in _YAML_BLOCK.findall(page.read_text())]


def test_the_readme_is_a_front_door_not_a_log():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_there_are_yaml_blocks_to_paste():
    assert _yaml_blocks(ROOT / "README.md")
    assert _yaml_blocks(ROOT / "docs" / "own-data.md")


@pytest.mark.parametrize(
    ("page", "index"),
    [(page, i) for page in PAGES for i in range(len(_yaml_blocks(page)))],
    ids=lambda value: value.name if isinstance(value, Path) else str(value),
)
def test_every_yaml_block_pastes_into_params_yaml_and_loads(page, index, tmp_path):
    """Each block replaces whole sections of the committed params.yaml; the result must load
    with every section valid, as a user who pasted it would run it."""
    block = parse_yaml(_yaml_blocks(page)[index])
    assert isinstance(block, dict), page.name
    assert set(block) <= set(SECTIONS), f"{page.name}: {sorted(block)}"
    params = read_yaml(ROOT / "params.yaml") | block
    path = tmp_path / "params.yaml"
    path.write_text(dump_yaml(params))
    loaded = load_params(path, *SECTIONS)
    for section, values in block.items():
        assert loaded[section].model_dump(mode="json").keys() == values.keys(), section


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_user_docs_carry_no_commit_hashes_or_issue_numbers(page):
    text = page.read_text()
    hashes = [
        word
        for word in re.findall(r"(?<![\w/.-])[0-9a-f]{7,40}(?![\w/.-])", text)
        if re.search(r"[a-f]", word) and re.search(r"\d", word)
    ]
    assert not hashes, hashes
    assert not re.findall(r"\b[Ii]ssues? #?\d+|(?<![\w&/])#\d+\b", text)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_fraudlab_command_named_exists(page):
    # a command line in a code block, or inline code that starts with the command
    named = set(re.findall(r"(?:^\s*|`)fraudlab ([a-z][a-z-]+)", page.read_text(), re.MULTILINE))
    assert named <= set(VERBS), f"{page.name}: unknown verbs {sorted(named - set(VERBS))}"


def test_the_results_pages_are_what_the_committed_metrics_give():
    results(["--root", str(ROOT), "--check"])


def test_the_readme_states_the_span_the_committed_protocol_needs():
    loaded = load_params(ROOT / "params.yaml", "split", "features")
    need = span_needed(loaded["split"], loaded["features"])
    readme = (ROOT / "README.md").read_text()
    days = (need.test_until - need.history_from).days
    before = (loaded["split"].train_start - need.folds_from).days
    look_back = (need.folds_from - need.history_from).days
    after = (need.test_until - loaded["split"].train_start).days
    expected = f"{days} days with the defaults: {before} before `train_start` for the folds, up to"
    assert expected in " ".join(readme.split())
    assert f"up to {look_back} more for the feature windows, {after} after it" in " ".join(
        readme.split()
    )


def test_the_serving_example_shows_the_committed_models_threshold_and_features():
    """The example answer goes stale when the model changes: its threshold must be the one the
    committed metrics record, and its features the committed params' feature list."""
    import json

    from fraudlab.features.names import feature_names

    text = (ROOT / "docs" / "serving.md").read_text()
    answer = json.loads(re.search(r"```json\n(.*?)```", text, flags=re.DOTALL).group(1))
    metrics = json.loads((ROOT / "metrics" / "evaluate" / "metrics.json").read_text())
    assert answer["threshold"] == metrics["test"]["at_threshold"]["threshold"]
    features = load_params(ROOT / "params.yaml", "features")["features"]
    assert list(answer["features"]) == feature_names(features)

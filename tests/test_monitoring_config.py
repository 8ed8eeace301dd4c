"""The Prometheus alerting rules and the Grafana dashboard shipped in monitoring/: valid for
promtool (Debian's prometheus package, installed by .ci/run), their unit tests pass and can fail,
and every PromQL expression of the dashboard parses. That every metric they name is one the
service exports is checked against a live server in test_service.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import command_or_skip
from test_params import ROOT

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "prometheus" / "fraudlab-alerts.yml"
RULE_TESTS = MONITORING / "prometheus" / "fraudlab-alerts.test.yml"
DASHBOARD = MONITORING / "grafana" / "fraudlab-dashboard.json"
METRIC = re.compile(r"\b(fraudlab_[a-z_]+)")


@pytest.fixture(scope="module")
def promtool() -> str:
    return command_or_skip(
        ("promtool",), required_by="FRAUDLAB_REQUIRE_PROMTOOL",
        hint=".ci/run installs Debian's prometheus package",
    )  # fmt: skip


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_alerting_rules_are_valid(promtool):
    done = _promtool(promtool, "check", "rules", RULES.name, cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 10 rules found" in done.stdout


def test_the_rules_fire_as_their_unit_tests_say(promtool):
    done = _promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rule_unit_tests_catch_a_wrong_level(promtool, tmp_path):
    """Control: the act level raised to 0.5 no longer fires on a PSI of 0.4."""
    for path in (RULES, RULE_TESTS):
        shutil.copy(path, tmp_path / path.name)
    rules = tmp_path / RULES.name
    text = rules.read_text()
    assert text.count('fraudlab_drift_psi{column!="score"}) >= 0.25') == 1
    rules.write_text(text.replace('{column!="score"}) >= 0.25', '{column!="score"}) >= 0.5'))
    done = _promtool(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "FraudlabFeatureDrift" in done.stdout + done.stderr


@pytest.mark.parametrize(
    "path",
    [MONITORING / "prometheus" / "prometheus.yml", ROOT / "deploy" / "prometheus.yml"],
    ids=["example", "compose stack"],
)
def test_the_prometheus_configs_load_the_rules(promtool, tmp_path, path):
    config = yaml.safe_load(path.read_text())
    key = tmp_path / "fraudlab-api-key"
    key.write_text("test-key\n")
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(key)
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = _promtool(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_every_dashboard_query_parses(promtool, tmp_path):
    """Each panel's PromQL, with the instance variable filled in, as a recording rule: promtool
    parses it (a typo in a query fails here, not on a wall screen)."""
    exprs = [e.replace("$instance", ".*") for e in _dashboard_exprs()]
    assert len(exprs) >= 10
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    done = _promtool(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_importable_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "fraudlab-scoring"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    # one datasource variable, so the same file imports by hand and provisions (compose stack)
    variable = dashboard["templating"]["list"][0]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    uids = {m for m in re.findall(r'"uid": "([^"]*)"', DASHBOARD.read_text()) if m.startswith("$")}
    assert uids == {"${datasource}"}
    drift = next(p for p in dashboard["panels"] if p["title"].startswith("Feature drift"))
    steps = drift["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.1, 0.25]  # monitor.warn, monitor.act


def referenced_metrics() -> set[str]:
    """The fraudlab_* metric names the rules and the dashboard read (histogram and counter
    sample names as written)."""
    return set(METRIC.findall(RULES.read_text())) | {
        name for expr in _dashboard_exprs() for name in METRIC.findall(expr)
    }

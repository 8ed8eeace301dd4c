"""The local stack in deploy/ (service, Prometheus, Grafana): valid for Compose (Debian's
docker-compose, installed by .ci/run, which validates without pulling an image), and wired to
the project's own files: every mounted file exists, Prometheus scrapes the service by its name
with the key the stack writes and loads the project's rules (promtool checks that configuration
in test_monitoring_config.py), and Grafana provisions the project's dashboard from where it is
mounted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import command_or_skip
from test_monitoring_config import MONITORING, RULES
from test_params import ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _mounts(service: dict) -> dict[str, str]:
    """Bind mounts of a service: container path -> host path (named volumes left out)."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        if source.startswith("."):
            mounts[target] = source
    return mounts


@pytest.fixture(scope="module")
def docker_compose() -> str:
    return command_or_skip(
        ("docker-compose",), required_by="FRAUDLAB_REQUIRE_COMPOSE",
        hint=".ci/run installs Debian's docker-compose",
    )  # fmt: skip


def _config(docker_compose: str, path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDLAB_")}
    return subprocess.run(
        [docker_compose, "-f", str(path), "config", "-q"],
        capture_output=True, text=True, check=False, timeout=60, env={**clean, **env},
    )  # fmt: skip


def test_compose_accepts_the_stack_and_requires_the_key(docker_compose, tmp_path):
    done = _config(docker_compose, COMPOSE, FRAUDLAB_API_KEY="0123456789abcdef0123")
    assert done.returncode == 0, done.stderr
    done = _config(docker_compose, COMPOSE)
    assert done.returncode != 0
    assert "set FRAUDLAB_API_KEY" in done.stderr
    # control: the check rejects an option the Compose spec does not have
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    broken = tmp_path / "deploy" / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("read_only: true", "read_only: true\n    rd: 1"))
    done = _config(docker_compose, broken, FRAUDLAB_API_KEY="0123456789abcdef0123")
    assert done.returncode != 0
    assert "rd" in done.stderr


def test_every_mounted_file_exists():
    for name, service in _compose()["services"].items():
        for target, source in _mounts(service).items():
            assert (DEPLOY / source).is_file(), f"{name}: {source} (for {target}) is missing"


def test_prometheus_scrapes_the_service_by_name_with_the_key_the_stack_writes():
    stack = _compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    ((target,),) = [group["targets"] for group in job["static_configs"]]
    host, port = target.split(":")
    assert host in stack
    assert f":{port}" in stack[host]["ports"][0]
    assert f"EXPOSE {port}" in (ROOT / "Dockerfile").read_text()
    key_file = job["authorization"]["credentials_file"]
    assert f">{key_file}" in stack["prometheus"]["entrypoint"][-1]
    # the rules beside the configuration, as rule_files names them
    mounts = _mounts(stack["prometheus"])
    config_dir = Path(next(t for t, s in mounts.items() if s == "./prometheus.yml")).parent
    for rule_file in config["rule_files"]:
        assert (DEPLOY / mounts[str(config_dir / rule_file)]).resolve() == RULES
    # the rest is the project's example configuration
    example = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    example["scrape_configs"][0]["static_configs"][0]["targets"] = [target]
    example["scrape_configs"][0]["authorization"]["credentials_file"] = key_file
    assert config == example


def test_grafana_provisions_the_dashboard_from_prometheus():
    stack = _compose()["services"]
    mounts = _mounts(stack["grafana"])
    dashboards = yaml.safe_load((DEPLOY / "grafana" / "dashboards.yml").read_text())
    (provider,) = dashboards["providers"]
    folder = provider["options"]["path"]
    mounted = [t for t, s in mounts.items() if s.endswith("fraudlab-dashboard.json")]
    assert [str(Path(t).parent) for t in mounted] == [folder]
    sources = yaml.safe_load((DEPLOY / "grafana" / "datasources.yml").read_text())
    (source,) = sources["datasources"]
    assert (source["type"], source["isDefault"]) == ("prometheus", True)
    assert source["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in stack["prometheus"]["ports"]

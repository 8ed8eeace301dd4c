"""``fraudlab VERB``: every verb is reachable, documented and fails clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fraudlab.cli import VERBS, main, usage
from helpers import run_stage


def test_the_usage_lists_every_verb():
    text = usage()
    for verb in VERBS:
        assert f"  {verb} " in text


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help_under_its_own_name(verb, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([verb, "--help"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fraudlab {verb}")


def test_an_unknown_verb_exits_2_with_the_usage(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["serv"])
    assert stopped.value.code == 2
    assert "unknown verb 'serv'" in capsys.readouterr().err


def test_python_dash_m_fraudlab_is_the_same_command(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fraudlab", "monitor", "--report", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "no monitoring report; run `dvc repro monitor` first" in done.stderr


@pytest.mark.parametrize(
    ("missing", "extra"), [("dvc.api", "pipeline"), ("gto", "pipeline"), ("fastapi", "serve")]
)
def test_a_library_of_another_extra_missing_is_one_line_naming_the_extra(
    missing, extra, monkeypatch, capsys, caplog
):
    """An install of one extra running the other's command: which extra to install, not a
    traceback (on the verb's import, and on a lazy import inside it)."""
    import importlib

    def absent(name, *args, **kwargs):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(importlib, "import_module", absent)
    with pytest.raises(SystemExit) as exited:
        main(["verify"])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"'{missing.split('.')[0]}' is not installed" in err
    assert f"'fraudlab[{extra}]'" in err
    monkeypatch.undo()

    def lazily(argv):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    assert run_stage(lazily, [], caplog) == 1
    assert f"'fraudlab[{extra}]'" in caplog.text

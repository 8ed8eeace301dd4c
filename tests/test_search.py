"""Search spaces become the right `dvc exp run -S` values; `dvc exp show --json` becomes a
leaderboard ranked by validation AP with failed runs flagged, never ranked."""

from __future__ import annotations

import logging
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fraudlab.core.errors import UserError
from fraudlab.experiments import search
from fraudlab.experiments.report import best_per_family, current_section, families_section
from fraudlab.experiments.search import (
    experiments,
    failure_reason,
    grid_overrides,
    leaderboard,
    load_space,
    queue_states,
    random_points,
    render,
    uncommitted_inputs,
)
from fraudlab.experiments.warm import Candidate, Outcome, grid_points
from helpers import cells
from test_params import ROOT


def test_grid_overrides_are_dvc_grid_syntax():
    got = grid_overrides("xgboost", {"max_depth": [3, 6], "learning_rate": [0.1, 0.3]})
    assert got == [
        "train.model=xgboost",
        "train.xgboost.max_depth=3,6",
        "train.xgboost.learning_rate=0.1,0.3",
    ]


def test_random_points_are_seeded_and_inside_their_ranges_and_become_dvc_values():
    space = load_space(ROOT / "search.yaml").random["xgboost"]
    first = random_points(space, n=50, seed=3)
    assert first == random_points(space, n=50, seed=3)
    assert first != random_points(space, n=50, seed=4)
    configs = [Candidate("xgboost", point, threads=1).overrides() for point in first]
    assert len({tuple(c) for c in configs}) == 50
    for config in configs:
        values = dict(item.split("=", 1) for item in config)
        assert values["train.model"] == "xgboost"
        assert values["train.n_jobs"] == "1"
        assert 2 <= int(values["train.xgboost.max_depth"]) <= 8
        assert 0.02 <= float(values["train.xgboost.learning_rate"]) <= 0.5
        assert 0.5 <= float(values["train.xgboost.subsample"]) <= 1.0


def test_a_grid_is_every_combination_in_dvc_order_and_applies_to_params_as_dvc_would():
    points = grid_points({"max_depth": [3, 6], "learning_rate": [0.1, 0.3]})
    assert points == [
        {"max_depth": 3, "learning_rate": 0.1},
        {"max_depth": 3, "learning_rate": 0.3},
        {"max_depth": 6, "learning_rate": 0.1},
        {"max_depth": 6, "learning_rate": 0.3},
    ]
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    changed = Candidate("random_forest", {"max_depth": 5}, threads=2).apply(raw)
    assert changed["train"]["model"] == "random_forest"
    assert changed["train"]["random_forest"]["max_depth"] == 5
    assert changed["train"]["n_jobs"] == 2
    assert raw["train"]["model"] == "xgboost"  # the params as read are left alone
    # every value goes through -S as YAML: what DVC then writes is what the warm run used
    candidate = Candidate("logistic_regression", {"C": 0.1, "solver": "lbfgs", "dual": False})
    values = dict(o.split("=", 1) for o in candidate.overrides())
    assert {k: yaml.safe_load(v) for k, v in values.items()} == {
        "train.model": "logistic_regression",
        "train.logistic_regression.C": 0.1,
        "train.logistic_regression.solver": "lbfgs",
        "train.logistic_regression.dual": False,
    }


def test_the_committed_search_space_holds_the_handbook_grids():
    grids = load_space(ROOT / "search.yaml").grids
    sizes = {family: math.prod(len(v) for v in grid.values()) for family, grid in grids.items()}
    assert sizes == {"logistic_regression": 4, "random_forest": 12, "xgboost": 18}


def test_a_malformed_search_space_names_the_problem(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("grids: {xgboost: {max_depth: []}}\nrandom: {}\n")
    with pytest.raises(UserError, match=r"(?s)space\.yaml.*grids\.xgboost\.max_depth"):
        load_space(path)


def _metrics(ap: float, k: int = 100) -> dict:
    return {
        "metrics/evaluate/metrics.json": {
            "data": {
                "test": {
                    "average_precision": ap - 0.01,
                    "auc_roc": 0.8,
                    f"card_precision_at_{k}": 0.3,
                },
                "validation": {
                    "average_precision": {"mean": ap, "std": 0.05},
                    "auc_roc": {"mean": 0.85, "std": 0.02},
                    f"card_precision_at_{k}": {"mean": 0.31, "std": 0.01},
                },
            }
        }
    }


def _experiment(
    name: str, family: str, depth: int, ap: float, state: str, error=None, k: int = 100
) -> dict:
    params = {
        "train": {"model": family, family: {"max_depth": depth, "n_estimators": 100}},
        "evaluate": {"top_k": k},
    }
    return {
        "name": name,
        "executor": {"state": state},
        "revs": [
            {
                "rev": f"{name:0<40}",
                "name": name,
                "error": error,
                "data": {
                    "params": {"params.yaml": {"data": params}},
                    "metrics": _metrics(ap, k),  # a failed run shows its baseline's metrics
                },
            }
        ],
    }


EXP_SHOW = [
    {"rev": "workspace", "name": None, "data": {}, "error": None, "experiments": None},
    {
        "rev": "abc",
        "name": "main",
        "experiments": [
            _experiment("good", "xgboost", 3, 0.70, "success"),
            _experiment("best", "xgboost", 4, 0.72, "success"),
            _experiment("broke", "xgboost", -1, 0.99, "failed", {"msg": "failed"}),
            _experiment("forest", "random_forest", 20, 0.71, "success"),
            _experiment("waiting", "xgboost", 9, 0.99, "queued"),
        ],
    },
]


def test_leaderboard_ranks_successes_by_validation_ap_and_never_ranks_failures():
    board = leaderboard(experiments(EXP_SHOW))
    assert board["experiment"].tolist() == ["best", "forest", "good", "broke", "waiting"]
    assert board["state"].tolist() == ["success"] * 3 + ["failed", "queued"]
    assert math.isnan(board.loc[3, "validation_average_precision"])  # not the baseline's 0.99
    table = [cells(line) for line in render(board, {"max_depth"}).splitlines()]
    assert table[2][:5] == ["1", "best", "xgboost", "max_depth=4", "0.720 ± 0.050"]
    assert table[5] == [
        "-",
        "broke",
        "xgboost",
        "max_depth=-1",
        "**FAILED** (`dvc queue logs broke`)",
        *[""] * 5,
    ]
    assert "**QUEUED**" in table[6]


def test_the_committed_model_is_ranked_beside_the_experiments():
    """The experiments compete with the commit they branch from: it has a row of its own,
    ranked by the same validation AP."""
    shown = [
        {
            "rev": "abc" + "0" * 37,
            "name": "main",
            "data": {
                "params": {"params.yaml": {"data": {"train": {"model": "xgboost"}}}},
                "metrics": _metrics(0.715),
            },
            "experiments": [
                _experiment("good", "xgboost", 3, 0.70, "success"),
                _experiment("best", "xgboost", 4, 0.72, "success"),
            ],
        }
    ]
    board = leaderboard(experiments(shown))
    assert board["experiment"].tolist() == ["best", "main (committed)", "good"]
    assert board["state"].tolist() == ["success", "committed", "success"]
    rows = [cells(line) for line in render(board, set()).splitlines()[2:]]
    assert rows[1][:2] == ["2", "main (committed)"]
    assert rows[1][4] == "0.715 ± 0.050"
    best = best_per_family(experiments(shown))
    assert best["experiment"].tolist() == ["best", "main (committed)"]
    assert "main (committed)" in families_section(best, {}, {})


def test_a_failed_experiment_reports_the_stage_error_from_its_log():
    log = (
        "Running stage 'validate':\n"
        "2026-01-01 10:00:00,000 ERROR fraudlab: validate failed: data/x.csv: no column TX_ID\n"
        "ERROR: failed to reproduce 'validate': failed to run: python -m ..., exited with 1\n"
    )
    assert failure_reason(log) == "validate failed: data/x.csv: no column TX_ID"
    assert failure_reason("ERROR: failed to reproduce 'x': [Errno 2] No such file\n") == (
        "ERROR: failed to reproduce 'x': [Errno 2] No such file"
    )
    assert failure_reason("") == "no log"


@pytest.mark.parametrize(
    "exp_show",
    [[], [{"rev": "abc", "name": "main", "experiments": None}]],
    ids=["no-baseline", "no-experiments"],
)
def test_no_experiments_give_an_empty_board_not_a_key_error(exp_show):
    """Every CI checkout has no experiments: the report must still be written."""
    table = experiments(exp_show)
    assert table.empty
    assert leaderboard(table).empty
    assert best_per_family(table).empty
    assert "No experiments were found" in families_section(best_per_family(table), {}, {})


def test_report_picks_each_familys_best_and_shows_threshold_and_cost():
    best = best_per_family(experiments(EXP_SHOW))
    assert dict(zip(best["family"], best["experiment"], strict=True)) == {
        "xgboost": "best",
        "random_forest": "forest",
    }
    metrics = _metrics(0.7)["metrics/evaluate/metrics.json"]["data"]
    at = {
        "threshold": 0.25,
        "precision": 0.5,
        "recall": 0.4,
        "f1": 0.44,
        "alerted_cards_per_day": 100.0,
        "cost_per_day": 1234.5,
        "tp": 10,
        "fp": 10,
    }
    metrics["test"]["at_threshold"] = metrics["validation"]["at_threshold"] = at
    section = current_section(metrics, "xgboost", top_k=100)
    rows = [cells(line) for line in section.splitlines() if line.startswith("|")]
    assert ["Average precision", "0.6900", "0.7000 ± 0.0500"] in rows
    assert "**0.2500**" in section
    assert ["Cost a day", "1,234", "1,234"] in rows


def _baseline(*experiments: dict) -> list[dict]:
    """`dvc exp show --json` with one baseline commit and these experiments."""
    return [{"rev": "abc", "name": "main", "experiments": list(experiments)}]


def test_another_top_k_fills_every_card_precision_column_and_row():
    """The metric key carries k: a leaderboard, report row or family table must not look for
    ``card_precision_at_100`` when ``evaluate.top_k`` is 50."""
    shown = _baseline(
        _experiment("fifty", "xgboost", 3, 0.70, "success", k=50),
        _experiment("forest", "random_forest", 5, 0.69, "success", k=50),
    )
    board = leaderboard(experiments(shown))
    assert board["test_card_precision"].tolist() == [0.3, 0.3]
    assert board["validation_card_precision"].tolist() == [0.31, 0.31]
    table = render(board, set()).splitlines()
    assert "val CP@50" in table[0]
    assert "test CP@50" in table[0]
    assert cells(table[2])[-4:] == ["0.310", "0.690", "0.800", "0.300"]
    families = families_section(best_per_family(experiments(shown)), {}, {})
    assert "test CP@50" in families
    assert cells(families.splitlines()[4])[-1] == "0.3000"
    metrics = _metrics(0.7, k=50)["metrics/evaluate/metrics.json"]["data"]
    metrics["test"]["at_threshold"] = metrics["validation"]["at_threshold"] = dict.fromkeys(
        ("threshold", "precision", "recall", "f1", "alerted_cards_per_day", "cost_per_day"), 0.5
    ) | {"tp": 1, "fp": 1}
    section = current_section(metrics, "xgboost", top_k=50)
    assert ["Card precision@50", "0.3000", "0.3100 ± 0.0100"] in [
        cells(line) for line in section.splitlines() if line.startswith("|")
    ]


def test_experiments_with_different_top_k_name_k_in_each_cell():
    shown = _baseline(
        _experiment("fifty", "xgboost", 3, 0.70, "success", k=50),
        _experiment("hundred", "xgboost", 4, 0.69, "success", k=100),
    )
    table = render(leaderboard(experiments(shown)), set()).splitlines()
    assert "val CP@k" in table[0]
    assert cells(table[2])[-4:] == ["0.310 (k=50)", "0.690", "0.800", "0.300 (k=50)"]
    assert cells(table[3])[-4:] == ["0.310 (k=100)", "0.680", "0.800", "0.300 (k=100)"]


def test_queue_status_is_read_for_each_task_and_the_live_workers():
    status = (
        "Task     Name        Created    Status\n"
        "953e330  proof-craw  03:50 AM   Running\n"
        "5b4bae1  sooty-leks  03:50 AM   Queued\n"
        "ae78859  rathe-eric  03:50 AM   Success\n"
        "b04e6cc  sound-roam  03:41 AM   Failed\n"
        "\nWorker status: 1 active, 0 idle\n"
    )
    states, workers = queue_states(status)
    assert states == {
        "proof-craw": "running",
        "sooty-leks": "queued",
        "rathe-eric": "success",
        "sound-roam": "failed",
    }
    assert workers == 1
    assert (
        queue_states("No experiment tasks in the queue.\n\nWorker status: 0 active, 0 idle")[1] == 0
    )


def _git(repo, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@x", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_the_search_refuses_to_queue_without_its_source_committed(tmp_path, monkeypatch):
    """A queued experiment starts from the last commit: the source's .dvc file must be in it."""
    monkeypatch.chdir(tmp_path)
    _git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "start")
    source = Path("data/external/our tx.csv")  # a space: names are never split
    outputs = {Path("data/raw/transactions.parquet")}
    assert uncommitted_inputs(Path("data/raw/transactions.parquet"), pipeline_outputs=outputs) == []
    (problem,) = uncommitted_inputs(source, pipeline_outputs=outputs)
    assert "produced by no stage and tracked by no .dvc file" in problem
    tracking = tmp_path / "data" / "external" / "our tx.csv.dvc"
    tracking.parent.mkdir(parents=True)
    tracking.write_text("outs:\n- md5: 0\n  path: our tx.csv\n")
    (problem,) = uncommitted_inputs(source, pipeline_outputs=outputs)
    assert problem.startswith(f"{tracking.relative_to(tmp_path)} (which tracks source.path")
    _git(tmp_path, "add", "-A")
    (problem,) = uncommitted_inputs(source, pipeline_outputs=outputs)
    assert problem.endswith("has uncommitted changes: commit it")
    _git(tmp_path, "commit", "-qm", "our data")
    assert uncommitted_inputs(source, pipeline_outputs=outputs) == []
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "new_module.py").write_text("")
    (problem,) = uncommitted_inputs(source, pipeline_outputs=outputs)
    assert problem.startswith("src/new_module.py is not tracked by Git")


def _status(**states: str) -> str:
    rows = "".join(f"{n:07x}  {name}  03:50 AM   {state}\n" for n, (name, state) in
                   enumerate(states.items()))  # fmt: skip
    return f"Task     Name        Created    Status\n{rows}\nWorker status: 1 active, 0 idle\n"


def test_a_running_search_reports_progress_the_best_so_far_and_each_failure_once(
    monkeypatch, caplog
):
    """While the queue runs: finished / failed / running / queued, the elapsed time, the best
    finished experiment (read again only when one more succeeded), and a failed experiment's
    own error as soon as it fails, once."""
    polls = iter(
        [
            _status(good="Running", best="Queued", broke="Queued"),
            _status(good="Success", best="Running", broke="Failed"),
            _status(good="Success", best="Running", broke="Failed"),
            _status(good="Success", best="Success", broke="Failed"),
        ]
    )
    calls = []

    def dvc(*args: str) -> str:
        calls.append(args[:2])
        if args[:2] == ("queue", "status"):
            return next(polls)
        assert args == ("queue", "logs", "broke")
        return "Running stage 'train':\nERROR fraudlab: train failed: train.xgboost.max_depth -1\n"

    monkeypatch.setattr(search, "dvc", dvc)
    shows = []
    monkeypatch.setattr(search, "_exp_show", lambda: shows.append(1) or EXP_SHOW)
    caplog.set_level(logging.INFO)
    finished = search._wait(["good", "best", "broke"], poll_seconds=0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("0 of 3 experiments finished (0 failed), 1 running, 2 queued; ")
    assert lines[0].endswith("best so far: none finished yet")
    assert lines[1] == "broke failed: train failed: train.xgboost.max_depth -1"
    assert lines[2].startswith("2 of 3 experiments finished (1 failed), 1 running, 0 queued; ")
    assert lines[2].endswith("best so far: good (validation AP 0.7000)")
    assert len(lines) == 4  # the failure is reported once
    assert calls.count(("queue", "logs")) == 1
    assert len(shows) == 2  # one success more, then the end
    assert set(finished["experiment"]) >= {"good", "best", "broke"}


def test_progress_counts_every_state():
    line = search.progress(
        {"a": "success", "b": "failed", "c": "running"}, ["a", "b", "c", "d"], 61.4, "a (0.7)"
    )
    assert line == (
        "2 of 4 experiments finished (1 failed), 1 running, 1 queued; 61 s; best so far: a (0.7)"
    )


def test_an_experiment_still_running_has_a_row_without_metrics():
    """`dvc exp show` during the queue lists a running experiment with no data yet."""
    running = _experiment("busy", "xgboost", 3, 0.9, "running")
    running["revs"][0]["data"] = None
    done = _experiment("done", "xgboost", 4, 0.7, "success")
    show = [{**EXP_SHOW[1], "experiments": [running, done]}]
    table = experiments(show)
    busy = table[table["experiment"] == "busy"].iloc[0]
    assert busy["state"] == "running"
    assert math.isnan(busy["validation_average_precision"])
    assert search.best_so_far(table, ["done", "busy"]) == "done (validation AP 0.7000)"


def _commit_with(ap: float, runs: list[dict]) -> dict:
    """`dvc exp show` of the commit (validation AP ``ap``) and its experiments ``runs``."""
    committed = _experiment("main", "xgboost", 3, ap, "success")["revs"][0]
    return {"rev": "a" * 40, "name": "main", "data": committed["data"], "experiments": runs}


def _warm(label: str, depth: int, ap: float, error: str = "") -> dict:
    metrics = {} if error else _metrics(ap)["metrics/evaluate/metrics.json"]["data"]["validation"]
    outcome = Outcome(Candidate("xgboost", {"max_depth": depth}), metrics, error, 1.0)
    return search.warm_row(label, outcome, top_k=100)


def test_warm_rows_rank_with_the_committed_model_and_show_no_test_figures():
    committed = experiments([_commit_with(0.72, [])])
    board = leaderboard(
        pd.DataFrame(
            [
                _warm("xgboost-01", 3, 0.70),
                _warm("xgboost-02", 6, 0.75),
                _warm("xgboost-03", -1, 0, error="max_depth: must be >= 0"),
            ]
        ).pipe(lambda warm: pd.concat([warm, committed], ignore_index=True))
    )
    assert list(board["experiment"]) == [
        "xgboost-02",
        "main (committed)",
        "xgboost-01",
        "xgboost-03",
    ]
    rows = [cells(line) for line in render(board, {"max_depth"}).splitlines()[2:]]
    assert rows[0][4:7] == ["0.750 ± 0.050", "0.850", "0.310"]
    assert rows[0][7:] == ["", "", ""]  # selection never computed them
    assert rows[3][4] == "**FAILED**: max_depth: must be >= 0"


def _confirm_with(monkeypatch, confirmed_ap: float) -> pd.DataFrame:
    board = leaderboard(pd.DataFrame([_warm("xgboost-01", 3, 0.70), _warm("xgboost-02", 6, 0.75)]))
    labels = {
        "xgboost-01": Candidate("xgboost", {"max_depth": 3}),
        "xgboost-02": Candidate("xgboost", {"max_depth": 6}),
    }
    queued = []
    monkeypatch.setattr(search, "_queue", lambda o: queued.append(o) or ["lucky-dvc"])
    show = [_commit_with(0.72, [_experiment("lucky-dvc", "xgboost", 6, confirmed_ap, "success")])]
    monkeypatch.setattr(search, "_run_queue", lambda names, jobs, poll: experiments(show))
    found = search._confirm(board, labels, confirm=1, jobs=2, poll_seconds=0)
    assert queued == [["train.model=xgboost", "train.xgboost.max_depth=6"]]  # the best only
    return found


def test_the_best_warm_configuration_becomes_the_dvc_experiment_that_reproduces_it(monkeypatch):
    board = _confirm_with(monkeypatch, confirmed_ap=0.75)
    assert list(board["experiment"]) == ["lucky-dvc", "xgboost-01"]
    assert board.loc[0, "test_average_precision"] == pytest.approx(0.74)


def test_a_dvc_experiment_that_disagrees_with_its_warm_run_fails_the_search(monkeypatch):
    with pytest.raises(
        UserError,
        match=r"xgboost-02: the DVC experiment lucky-dvc does not "
        r"reproduce .*validation_average_precision 0\.75 \(warm\) != 0\.7501",
    ):
        _confirm_with(monkeypatch, confirmed_ap=0.7501)

"""Hyperparameter search, and a leaderboard of the results.

    fraudlab search grid                     # the handbook's grids, every family
    fraudlab search grid xgboost --jobs 2    # one family's grid on two worker processes
    fraudlab search random xgboost -n 20 --seed 0
    fraudlab search leaderboard              # every DVC experiment of the current commit

``grid`` and ``random`` validate every configuration in warm worker processes
(``fraudlab.experiments.warm``), report the progress (finished, failed with the reason, running,
queued, the best so far) as they go, then run the best as a DVC experiment (``dvc exp run --queue
evaluate -S ...``: up to the stage whose metrics rank it) whose validation figures must equal
the warm ones, and print the leaderboard sorted by mean validation AP, failures flagged. With
``--engine queue`` every configuration is a queued DVC experiment instead (``dvc queue start``
itself reports success even when a run fails: the states come from ``dvc queue status``).
The winner is applied with ``dvc exp apply <name>``, its prequential test and monitoring run by
``dvc repro``, and committed (docs/experiments.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fraudlab.core.errors import UserError
from fraudlab.core.io import read_yaml
from fraudlab.core.params import load_params
from fraudlab.experiments.tables import markdown_table
from fraudlab.experiments.warm import Candidate, Outcome, Point, dvc_value, grid_points, run_warm
from fraudlab.modeling.metrics import card_precision_key

log = logging.getLogger(__name__)

FAMILIES = ("logistic_regression", "random_forest", "xgboost")
METRICS_FILE = "metrics/evaluate/metrics.json"
RANKING_STAGE = "evaluate"  # writes METRICS_FILE
_QUEUED = re.compile(r"Queued experiment '([^']+)'")
_UNFINISHED = {"queued", "running"}
# rows with metrics: a finished experiment, and the commit the experiments branch from
_MEASURED = ("success", "committed")
_WORKERS = re.compile(r"Worker status: (\d+) active, (\d+) idle")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Choice(_Strict):
    choice: Annotated[list[float | int | str | bool], Field(min_length=1)]


class Uniform(_Strict):
    uniform: tuple[float, float]


class LogUniform(_Strict):
    log_uniform: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]


class IntRange(_Strict):
    int: tuple[int, int]


Distribution = Choice | Uniform | LogUniform | IntRange
Family = Literal["logistic_regression", "random_forest", "xgboost"]


class SearchSpace(_Strict):
    grids: dict[Family, dict[str, Annotated[list, Field(min_length=1)]]]
    random: dict[Family, dict[str, Distribution]]


def load_space(path: str | Path) -> SearchSpace:
    try:
        return SearchSpace.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise UserError(f"{path}: {exc}") from None


def grid_overrides(family: str, grid: dict[str, list]) -> list[str]:
    """`-S` values that make DVC queue the whole grid (comma lists are crossed)."""
    return [f"train.model={family}"] + [
        f"train.{family}.{name}={','.join(dvc_value(v) for v in values)}"
        for name, values in grid.items()
    ]


def _draw(distribution: Distribution, rng: np.random.Generator) -> object:
    if isinstance(distribution, Choice):
        return distribution.choice[int(rng.integers(len(distribution.choice)))]
    if isinstance(distribution, Uniform):
        return round(float(rng.uniform(*distribution.uniform)), 4)
    if isinstance(distribution, LogUniform):
        low, high = (math.log(v) for v in distribution.log_uniform)
        return float(f"{math.exp(rng.uniform(low, high)):.4g}")
    return int(rng.integers(distribution.int[0], distribution.int[1] + 1))


def random_points(space: dict[str, Distribution], n: int, seed: int) -> list[Point]:
    """``n`` sampled configurations (the same ones for the same seed)."""
    rng = np.random.default_rng(seed)
    return [{name: _draw(d, rng) for name, d in space.items()} for _ in range(n)]


def _metric(metrics: dict, *path: str) -> float:
    for key in path:
        metrics = metrics.get(key, {}) if isinstance(metrics, dict) else {}
    return float(metrics) if isinstance(metrics, int | float) else float("nan")


def _row(name: str, revision: str, data: dict, state: str) -> dict:
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    train, top_k = params.get("train") or {}, (params.get("evaluate") or {}).get("top_k")
    metrics = ((data.get("metrics") or {}).get(METRICS_FILE) or {}).get("data") or {}
    family = train.get("model", "")
    hyper = train.get(family, {})
    ok = state in _MEASURED
    row = {"experiment": name, "rev": revision, "family": family, "state": state, "params": hyper}
    row["reason"] = ""  # why it failed, when known without its log (a warm search's failure)
    # Card precision's key carries the experiment's own k: read it under a name without k.
    keys = {
        "average_precision": "average_precision",
        "auc_roc": "auc_roc",
        "card_precision": card_precision_key(top_k) if top_k else "",
    }
    row["top_k"] = top_k
    for split in ("validation", "test"):
        for column, metric in keys.items():
            path = (split, metric, "mean") if split == "validation" else (split, metric)
            row[f"{split}_{column}"] = _metric(metrics, *path) if ok else float("nan")
    row["validation_average_precision_std"] = (
        _metric(metrics, "validation", "average_precision", "std") if ok else float("nan")
    )
    return row


def experiments(exp_show: list[dict]) -> pd.DataFrame:
    """One row per experiment in `dvc exp show --json` output: name, Git revision, family,
    state (success, failed, queued, running), its train params and its metrics (NaN unless it
    succeeded: a failed run reports its baseline's files); and one row for each commit they
    branch from (state ``committed``): the model the experiments compete with."""
    rows = []
    for baseline in exp_show:
        if baseline["rev"] != "workspace" and baseline.get("data"):
            name = f"{baseline.get('name') or baseline['rev'][:7]} (committed)"
            rows.append(_row(name, baseline["rev"], baseline["data"], "committed"))
        for experiment in baseline.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state") or "success"
            revision = experiment["revs"][0]
            if revision.get("error") and state == "success":
                state = "failed"
            name = experiment.get("name") or revision["rev"][:7]
            # a running experiment has no data yet (``dvc exp show`` during the queue)
            rows.append(_row(name, revision["rev"], revision.get("data") or {}, state))
    # The columns exist even with no experiment (every CI checkout), so callers can filter.
    return pd.DataFrame(rows, columns=list(_row("", "", {}, "").keys()))


def leaderboard(table: pd.DataFrame) -> pd.DataFrame:
    """Successful experiments and the committed model by mean validation AP (best first), then
    the others."""
    done = table["state"].isin(_MEASURED)
    ranked = table[done].sort_values(
        ["validation_average_precision", "experiment"], ascending=[False, True], kind="stable"
    )
    return pd.concat([ranked, table[~done].sort_values("experiment")], ignore_index=True)


def _changed(params: dict, varied: set[str]) -> str:
    return " ".join(f"{k}={params[k]}" for k in sorted(varied) if k in params)


def _varied(board: pd.DataFrame) -> set[str]:
    """Hyperparameters whose value differs between the experiments shown."""
    names = {name for params in board["params"] for name in params}
    return {n for n in names if board["params"].map(lambda p, n=n: repr(p.get(n))).nunique() > 1}


def card_precision_label(board: pd.DataFrame) -> str:
    """``CP@k`` with the experiments' k when they share one; else each cell names its own."""
    ks = set(board["top_k"].dropna())
    return f"CP@{ks.pop()}" if len(ks) == 1 else "CP@k"


def figure(value: float, digits: int = 3) -> str:
    """A metric's cell: empty where there is no figure (a warm row has no test figures)."""
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def card_precision_cell(value: float, k: int | None, label: str, digits: int = 3) -> str:
    shown = figure(value, digits)
    return shown if label != "CP@k" or not shown else f"{shown} (k={k})"


def render(board: pd.DataFrame, varied: set[str]) -> str:
    """The leaderboard as a GitHub-flavoured Markdown table."""
    cp = card_precision_label(board[board["state"].isin(_MEASURED)])
    rows = []
    for rank, row in enumerate(board.itertuples(index=False), start=1):
        cells = {
            "#": str(rank),
            "experiment": row.experiment,
            "family": row.family,
            "params": _changed(row.params, varied),
        }
        if row.state not in _MEASURED:
            hint = f" (`dvc queue logs {row.experiment}`)" if row.state == "failed" else ""
            hint = f": {row.reason}" if row.reason else hint
            rows.append(cells | {"#": "-", "val AP (± std)": f"**{row.state.upper()}**{hint}"})
            continue
        rows.append(
            cells
            | {
                "val AP (± std)": f"{row.validation_average_precision:.3f} ± "
                f"{row.validation_average_precision_std:.3f}",
                "val AUC": f"{row.validation_auc_roc:.3f}",
                f"val {cp}": card_precision_cell(row.validation_card_precision, row.top_k, cp),
                "test AP": figure(row.test_average_precision),
                "test AUC": figure(row.test_auc_roc),
                f"test {cp}": card_precision_cell(row.test_card_precision, row.top_k, cp),
            }
        )
    columns = ["#", "experiment", "family", "params", "val AP (± std)", "val AUC", f"val {cp}"]
    columns += ["test AP", "test AUC", f"test {cp}"]
    return markdown_table(pd.DataFrame(rows, columns=columns).fillna("")) + "\n"


# --- I/O: the dvc command line --------------------------------------------------------------


def dvc(*args: str) -> str:
    """Run the dvc of this environment; its output, or a UserError with it."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise UserError(f"dvc {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _outputs() -> set[Path]:
    """Every output the pipeline's stages declare (dvc.yaml)."""
    stages = read_yaml("dvc.yaml")["stages"].values()
    return {
        Path(next(iter(out)) if isinstance(out, dict) else out)
        for stage in stages
        for kind in ("outs", "metrics", "plots")
        for out in stage.get(kind, [])
    }


def _flags(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("-S", override)]


def _queue(overrides: list[str]) -> list[str]:
    # only up to the stage whose metrics rank them: the prequential test and the monitor are
    # for the model that is kept, and `dvc repro` runs them after `dvc exp apply`
    output = dvc("exp", "run", "--queue", RANKING_STAGE, *_flags(overrides))
    return _QUEUED.findall(output)


def _exp_show() -> list[dict]:
    return json.loads(dvc("exp", "show", "--json"))


def queue_states(status: str) -> tuple[dict[str, str], int]:
    """Each task's state (lower case) and the number of live workers, from `dvc queue status`."""
    states = {}
    for line in status.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and not line.startswith("Worker status"):
            states[fields[1]] = fields[-1].lower()
    found = _WORKERS.search(status)
    return states, int(found.group(1)) + int(found.group(2)) if found else 0


def progress(states: dict[str, str], names: list[str], elapsed: float, best: str) -> str:
    """One line of a running search: how many experiments finished, failed, run and wait, the
    time so far and the best finished one."""
    counts = pd.Series([states.get(name, "queued") for name in names]).value_counts()
    finished = len(names) - int(counts.get("queued", 0)) - int(counts.get("running", 0))
    return (
        f"{finished} of {len(names)} experiments finished ({int(counts.get('failed', 0))} "
        f"failed), {int(counts.get('running', 0))} running, {int(counts.get('queued', 0))} "
        f"queued; {elapsed:.0f} s; best so far: {best}"
    )


def best_so_far(table: pd.DataFrame, succeeded: list[str]) -> str:
    """The best by validation AP of the experiments the queue reports succeeded."""
    done = table[table["experiment"].isin(succeeded) & (table["state"] == "success")]
    if done.empty:
        return "none finished yet"
    top = leaderboard(done).iloc[0]
    return f"{top['experiment']} (validation AP {top['validation_average_precision']:.4f})"


def _wait(names: list[str], poll_seconds: float) -> pd.DataFrame:
    """Poll the queue (one cheap call) until every named experiment finished, logging the
    progress, the best so far (read again when one more succeeded) and each failure's reason
    as it happens."""
    started, idle_polls = time.perf_counter(), 0
    succeeded, reported, best = 0, set(), "none finished yet"
    while True:
        states, workers = queue_states(dvc("queue", "status"))
        unfinished = sum(states.get(name, "queued") in _UNFINISHED for name in names)
        if unfinished == 0:
            table = experiments(_exp_show())
            return table[table["experiment"].isin(names) | (table["state"] == "committed")]
        for name in sorted(n for n in names if states.get(n) == "failed" and n not in reported):
            reported.add(name)
            log.warning("%s failed: %s", name, _failure_reason_of(name))
        done = [name for name in names if states.get(name) == "success"]
        if len(done) > succeeded:
            try:
                succeeded, best = len(done), best_so_far(experiments(_exp_show()), done)
            except UserError as exc:  # DVC can fail to list while workers commit: next poll
                log.debug("best so far not read this time: %s", exc)
        # A worker that died leaves tasks queued forever: stop instead of waiting on them.
        idle_polls = 0 if workers else idle_polls + 1
        if idle_polls >= 3:
            raise UserError(
                f"{unfinished} experiment(s) still queued but no queue worker is running: "
                "see `dvc queue status`, then `dvc queue start`"
            )
        log.info("%s", progress(states, names, time.perf_counter() - started, best))
        time.sleep(poll_seconds)


def git(*args: str, binary: bool = False) -> str | bytes:
    """Run git; its output (bytes with ``binary``), or a UserError with its message."""
    done = subprocess.run(["git", *args], capture_output=True, check=False)
    if done.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed: {done.stderr.decode().strip()}")
    return done.stdout if binary else done.stdout.decode()


def _git_paths(*args: str) -> set[Path]:
    """The paths a git command lists with -z: exactly as stored, NUL-separated (no quoting of
    odd characters, no splitting at spaces)."""
    return {Path(name) for name in git(*args).split("\0") if name}


def dvc_file_of(path: Path) -> Path | None:
    """The ``.dvc`` file that tracks ``path`` (its own, or a tracked directory's above it)."""
    for candidate in (path, *path.parents):
        if candidate.name and candidate.with_name(candidate.name + ".dvc").is_file():
            return candidate.with_name(candidate.name + ".dvc")
    return None


def uncommitted_inputs(source: Path, *, pipeline_outputs: set[Path]) -> list[str]:
    """Why queued experiments would fail to find their inputs, one reason a line; empty when
    nothing stands in the way. A queued experiment runs in a copy of the last commit with the
    workspace's changes to tracked files applied: a file Git does not track is not there."""
    untracked = _git_paths("ls-files", "-z", "--others", "--exclude-standard")
    changed = _git_paths("diff", "-z", "--name-only", "HEAD")
    problems = [
        f"{path} is not tracked by Git: `git add {path}` and commit it"
        for path in sorted(untracked)
        if (path.suffix == ".py" and path.parts[0] == "src") or path.name in {"dvc.yaml"}
    ]
    if source in pipeline_outputs:
        return problems
    tracking = dvc_file_of(source)
    if tracking is None:
        problems.append(
            f"source.path {source} is produced by no stage and tracked by no .dvc file: "
            f"`dvc add {source}`, then commit {source}.dvc"
        )
    elif tracking in untracked:
        problems.append(
            f"{tracking} (which tracks source.path {source}) is not committed: "
            f"`git add {tracking}` and commit it"
        )
    elif tracking in changed:
        problems.append(f"{tracking} has uncommitted changes: commit it")
    return problems


def _run_queue(names: list[str], jobs: int, poll_seconds: float) -> pd.DataFrame:
    """Start ``jobs`` queue workers and wait for the named experiments; their rows."""
    # The worker outlives this call and keeps its stdout: never wait on that pipe.
    subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "queue", "start", "--jobs", str(jobs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return _wait(names, poll_seconds)


def _run_search(batches: list[list[str]], jobs: int, poll_seconds: float) -> pd.DataFrame:
    started = time.perf_counter()
    names = [name for overrides in batches for name in _queue(overrides)]
    log.info("queued %d experiments; starting %d queue worker(s)", len(names), jobs)
    finished = _run_queue(names, jobs, poll_seconds)
    log.info(
        "%d experiments finished in %.0f s (queueing, DVC overhead and runs)",
        len(names),
        time.perf_counter() - started,
    )
    return finished


def failure_reason(log_text: str) -> str:
    """The line of an experiment's log that says why it failed: a stage's own one-line error
    (it names the file, key or rule), else DVC's error, else the log's last line."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    ours = [line.split("ERROR fraudlab: ", 1)[1] for line in lines if "ERROR fraudlab: " in line]
    dvc_errors = [line for line in lines if line.startswith("ERROR")]
    return (ours or dvc_errors or lines or ["no log"])[-1]


def _failure_reason_of(name: str) -> str:
    try:
        return failure_reason(dvc("queue", "logs", name))
    except UserError as exc:
        return f"no log ({exc})"


def _failure_reasons(failed: pd.DataFrame) -> list[str]:
    return [
        f"{row.experiment}: {row.reason or _failure_reason_of(row.experiment)}"
        for row in failed.itertuples(index=False)
    ]


def _report(
    board: pd.DataFrame, varied: set[str], markdown: str | None, unrun: dict[str, str]
) -> None:
    """Print the leaderboard and how to apply the best; ``unrun`` maps a warm search's label to
    the `dvc exp run` command that makes it a DVC experiment (when its best was not confirmed)."""
    table = render(board, varied)
    print(table)
    if markdown:
        Path(markdown).write_text(table)
    measured = board[board["state"].isin(_MEASURED)]
    if len(measured) and measured.iloc[0]["state"] == "committed":
        print("The committed model stays ahead: no experiment beats it on validation AP.")
    elif len(measured) and measured.iloc[0]["experiment"] in unrun:
        values = unrun[measured.iloc[0]["experiment"]]
        print(f"Best on validation AP: {measured.iloc[0]['experiment']}. Run and apply it with:")
        print(f"  {values} && dvc repro")
    elif len(measured):
        best = measured.iloc[0]["experiment"]
        print(f"Best on validation AP: {best}. Apply it with:\n  dvc exp apply {best} && dvc repro")
        print(f'  git add -A && git commit -m "Select {best}: ..."  # then dvc metrics diff HEAD~1')
    failed = board[board["state"] == "failed"]
    if len(failed):
        reasons = "\n  ".join(_failure_reasons(failed))
        raise UserError(f"{len(failed)} experiment(s) failed:\n  {reasons}")


# --- the warm search: ranked in warm worker processes, the best confirmed by DVC -------------


def _exp_data(train: dict, top_k: int, metrics: dict) -> dict:
    """A warm outcome in the shape `dvc exp show --json` gives an experiment (one row reader)."""
    params = {"train": train, "evaluate": {"top_k": top_k}}
    return {
        "params": {"params.yaml": {"data": params}},
        "metrics": {METRICS_FILE: {"data": {"validation": metrics}}},
    }


def warm_row(label: str, outcome: Outcome, top_k: int) -> dict:
    """A leaderboard row of a warm outcome: validation figures only (no test figures exist)."""
    candidate = outcome.candidate
    train = {"model": candidate.family, candidate.family: candidate.point}
    state = "failed" if outcome.error else "success"
    row = _row(label, "", _exp_data(train, top_k, outcome.metrics), state)
    return row | {"reason": outcome.error}


_COMPARED = [
    "validation_average_precision",
    "validation_average_precision_std",
    "validation_auc_roc",
    "validation_card_precision",
]


def confirmation_mismatches(warm: pd.Series, confirmed: pd.Series) -> list[str]:
    """The validation figures a DVC experiment and its warm run disagree on (exact floats)."""
    return [
        f"{column} {float(warm[column])!r} (warm) != {float(confirmed[column])!r} (DVC)"
        for column in _COMPARED
        if warm[column] != confirmed[column]
    ]


def _confirm(
    board: pd.DataFrame, labels: dict[str, Candidate], confirm: int, jobs: int, poll_seconds: float
) -> pd.DataFrame:
    """Queue the best ``confirm`` warm configurations as DVC experiments; the board with them
    named as DVC names them, with their test figures."""
    warm = board[(board["rev"] == "") & (board["state"] == "success")]
    chosen = list(warm["experiment"][:confirm])
    if not chosen:
        return board
    names = {label: _queue(labels[label].overrides())[0] for label in chosen}
    log.info("confirming %s as DVC experiment(s) %s", ", ".join(chosen), ", ".join(names.values()))
    finished = _run_queue(list(names.values()), min(jobs, len(names)), poll_seconds)
    by_name = finished.set_index("experiment")
    rows = []
    for row in board.to_dict("records"):
        name = names.get(row["experiment"])
        if name is None:
            rows.append(row)
            continue
        confirmed = by_name.loc[name]
        if confirmed["state"] != "success":
            raise UserError(
                f"{row['experiment']} ran as DVC experiment {name} and failed: "
                f"{_failure_reason_of(name)}"
            )
        mismatches = confirmation_mismatches(pd.Series(row), confirmed)
        if mismatches:
            raise UserError(
                f"{row['experiment']}: the DVC experiment {name} does not reproduce the warm "
                f"search's figures: {'; '.join(mismatches)}"
            )
        rows.append(confirmed.to_dict() | {"experiment": name})
    return leaderboard(pd.DataFrame(rows))


def _split_is_current(params_path: str) -> Path:
    """The validation folds a warm search reads, refused unless `dvc status` says the split and
    every stage before it are what the workspace's code, params and data produce."""
    changed = json.loads(dvc("status", "--json", "--with-deps", "split") or "{}")
    if changed:
        raise UserError(
            f"`dvc status` reports changes in {', '.join(sorted(changed))}: the validation folds "
            f"are not what {params_path} and the code produce; run `dvc repro split` first"
        )
    return Path("data/split/folds.parquet")


def _warm_search(
    candidates: list[Candidate], *, params_path: str, jobs: int, confirm: int, poll: float
) -> tuple[pd.DataFrame, dict[str, str]]:
    folds = _split_is_current(params_path)
    raw = read_yaml(params_path)
    top_k = int(raw["evaluate"]["top_k"])
    labels = {f"{c.family}-{i:02d}": c for i, c in enumerate(candidates, start=1)}
    label_of = {id(c): label for label, c in labels.items()}
    started, rows, fits = time.perf_counter(), [], 0.0
    log.info("validating %d configurations on %d warm worker(s)", len(candidates), jobs)
    for outcome, remaining in run_warm(
        candidates, raw=raw, folds=folds, jobs=jobs, origin=params_path
    ):
        label = label_of[id(outcome.candidate)]
        rows.append(warm_row(label, outcome, top_k))
        fits += outcome.fit_seconds
        if outcome.error:
            log.warning("%s failed: %s", label, outcome.error)
        states = {row["experiment"]: row["state"] for row in rows}
        running = min(jobs, remaining)
        states |= dict.fromkeys(
            [label for label in labels if label not in states][:running], "running"
        )
        best = best_so_far(pd.DataFrame(rows), [row["experiment"] for row in rows])
        log.info("%s", progress(states, list(labels), time.perf_counter() - started, best))
    wall = time.perf_counter() - started
    print(
        f"{len(candidates)} configurations validated in {wall:.0f} s on {jobs} worker(s): "
        f"fits {fits:.0f} worker-seconds, per configuration {wall * jobs / len(candidates):.1f} "
        f"worker-seconds of which fits {fits / len(candidates):.1f} s",
        file=sys.stderr,
    )
    committed = experiments(_exp_show())
    board = leaderboard(
        pd.concat(
            [pd.DataFrame(rows), committed[committed["state"] == "committed"]], ignore_index=True
        )
    )
    confirmed = _confirm(board, labels, confirm, jobs, poll)
    log.info("search finished in %.0f s", time.perf_counter() - started)
    unrun = {
        label: shlex.join(["dvc", "exp", "run", RANKING_STAGE, *_flags(c.overrides())])
        for label, c in labels.items()
    }
    return confirmed, unrun


def _candidates(args: argparse.Namespace, space: SearchSpace) -> tuple[list[Candidate], set[str]]:
    """The configurations a grid or random search asks for, and the hyperparameters varied."""
    if args.command == "random":
        points = random_points(space.random[args.family], args.n, args.seed)
        found = [Candidate(args.family, point, args.threads) for point in points]
        return found, set(space.random[args.family])
    families = args.families or list(FAMILIES)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise UserError(f"unknown model family {unknown}: choose from {list(FAMILIES)}")
    found = [
        Candidate(family, point, args.threads)
        for family in families
        for point in grid_points(space.grids[family])
    ]
    return found, {name for f in families for name in space.grids[f]}


def search(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fraudlab search", description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="search.yaml", help="search spaces (YAML)")
    parser.add_argument("--params", default="params.yaml", help="params (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument(
        "--threads",
        type=int,
        help="set train.n_jobs in every configuration, e.g. 1 with --jobs 2 on 2 cores",
    )
    parser.add_argument(
        "--engine",
        choices=["warm", "queue"],
        default="warm",
        help="warm: rank in warm worker processes, confirm the best as DVC experiments; "
        "queue: every configuration a queued DVC experiment (default: %(default)s)",
    )
    parser.add_argument(
        "--confirm",
        type=int,
        default=1,
        help="warm: the best N configurations run as DVC experiments (default: 1)",
    )
    parser.add_argument("--poll", type=float, default=15.0, help="seconds between queue checks")
    parser.add_argument("--markdown", help="also write the leaderboard to this file")
    commands = parser.add_subparsers(dest="command", required=True)
    grid = commands.add_parser("grid", help="run the grids of search.yaml")
    grid.add_argument("families", nargs="*", metavar="family", help=f"default: {FAMILIES}")
    sampled = commands.add_parser("random", help="run sampled configurations")
    sampled.add_argument("family", choices=FAMILIES)
    sampled.add_argument("-n", type=int, default=20, help="configurations (default: 20)")
    sampled.add_argument("--seed", type=int, default=0)
    commands.add_parser("leaderboard", help="rank every experiment of the current commit")
    args = parser.parse_args(argv)

    space = load_space(args.space)
    if args.command == "leaderboard":
        board = leaderboard(experiments(_exp_show()))
        _report(board, _varied(board), args.markdown, {})
        return
    candidates, varied = _candidates(args, space)
    problems = uncommitted_inputs(
        Path(load_params(args.params, "source")["source"].path), pipeline_outputs=_outputs()
    )
    if problems and (args.engine == "queue" or args.confirm):
        raise UserError(
            "nothing was run: DVC experiments run in a copy of the last commit, where\n  "
            + "\n  ".join(problems)
        )
    if args.engine == "warm":
        board, unrun = _warm_search(
            candidates,
            params_path=args.params,
            jobs=args.jobs,
            confirm=args.confirm,
            poll=args.poll,
        )
        _report(board, varied, args.markdown, unrun)
        return
    if args.command == "grid":
        batches = [grid_overrides(f, space.grids[f]) for f in args.families or FAMILIES]
        batches = [[*b, f"train.n_jobs={args.threads}"] if args.threads else b for b in batches]
    else:
        batches = [candidate.overrides() for candidate in candidates]
    _report(leaderboard(_run_search(batches, args.jobs, args.poll)), varied, args.markdown, {})

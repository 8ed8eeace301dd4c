"""The warm search: every configuration of a grid or a random search validated in long-lived
worker processes that read the validation folds once, so a configuration costs its fits and
little more; the best then confirmed as DVC experiments.

A queued DVC experiment pays for a temporary workspace, a checkout, two stage processes with their
imports, the evaluation, plots and a commit on top of its fits. Ranking needs only the validation
folds' fits and their metrics, computed here by the same functions the train and evaluate stages
call, with the same params, seeds and thread counts. The best configurations are then queued as
DVC experiments (``dvc exp run --queue evaluate -S ...``), so each winner has its params and
metrics recorded by ``dvc exp`` and applies with ``dvc exp apply``; their validation figures must
equal the warm ones exactly, or the search fails.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from fraudlab.core.errors import UserError
from fraudlab.core.io import read_parquet
from fraudlab.core.params import TrainParams, parse_params
from fraudlab.features.names import feature_names
from fraudlab.modeling.metrics import validation_metrics
from fraudlab.modeling.pipeline import prequential_scores
from fraudlab.modeling.split import FOLD_COLUMN

log = logging.getLogger(__name__)

Point = dict[str, object]  # one configuration: hyperparameters of train.<family>


def dvc_value(value: object) -> str:
    """A value as `dvc exp run -S` parses it (YAML)."""
    return json.dumps(value) if isinstance(value, str) else str(value).lower()


@dataclass(frozen=True)
class Candidate:
    """One configuration of the search: its family, hyperparameters and thread count."""

    family: str
    point: Point
    threads: int | None = None

    def overrides(self) -> list[str]:
        """The `dvc exp run -S` values that make a DVC experiment of this configuration."""
        found = [f"train.model={self.family}"]
        found += [f"train.{self.family}.{k}={dvc_value(v)}" for k, v in self.point.items()]
        return found + ([f"train.n_jobs={self.threads}"] if self.threads else [])

    def apply(self, raw: dict) -> dict:
        """``raw`` params (params.yaml as read) with this configuration set, as DVC would."""
        changed = copy.deepcopy(raw)
        changed["train"]["model"] = self.family
        changed["train"][self.family].update(self.point)
        if self.threads:
            changed["train"]["n_jobs"] = self.threads
        return changed


def grid_points(grid: dict[str, list]) -> list[Point]:
    """Every combination of a grid's values, in the order DVC queues a crossed grid."""
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


@dataclass
class Outcome:
    """What validating one candidate gave: its metrics, or why it failed."""

    candidate: Candidate
    metrics: dict = field(default_factory=dict)
    error: str = ""
    fit_seconds: float = 0.0


# --- the worker process: the folds read once, then one candidate per call --------------------

_FOLDS: dict[str, pd.DataFrame] = {}


def _load_folds(path: str) -> None:
    _FOLDS["rows"] = read_parquet(path)


def validate(train: dict, features: list[str], top_k: int) -> tuple[dict, float]:
    """The validation metrics of ``train`` params (the evaluate stage's ``validation`` figures
    without the threshold's), and the seconds its fits and fold scoring took."""
    params = TrainParams.model_validate(train)
    started = time.perf_counter()
    scored = prequential_scores(_FOLDS["rows"], features, params=params)
    seconds = time.perf_counter() - started
    return validation_metrics(scored, FOLD_COLUMN, top_k), seconds


def _validate_in_worker(train: dict, features: list[str], top_k: int) -> tuple[dict, float, str]:
    # Errors cross the process boundary as their message: a user's bad value is an outcome of
    # the search (reported with the others), not a crash of it.
    try:
        metrics, seconds = validate(train, features, top_k)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        return {}, 0.0, reason
    return metrics, seconds, ""


# --- the coordinating process ----------------------------------------------------------------


def checked_train(raw: dict, candidate: Candidate, origin: str) -> tuple[dict, str]:
    """The candidate's train section as a plain dict, or why its params are invalid (the same
    validation a stage applies to params.yaml)."""
    try:
        parsed = parse_params(candidate.apply(raw), origin)
    except UserError as exc:
        return {}, str(exc)
    return parsed["train"].model_dump(), ""


def run_warm(
    candidates: list[Candidate],
    *,
    raw: dict,
    folds: Path,
    jobs: int,
    origin: str = "params.yaml",
) -> Iterator[tuple[Outcome, int]]:
    """Validate every candidate on ``jobs`` worker processes; yield each outcome as it finishes
    with the number of candidates still running or waiting."""
    features = feature_names(parse_params(raw, origin)["features"])
    top_k = int(raw["evaluate"]["top_k"])
    checked = [(candidate, *checked_train(raw, candidate, origin)) for candidate in candidates]
    runnable = [(candidate, train) for candidate, train, problem in checked if not problem]
    invalid = [(candidate, problem) for candidate, _, problem in checked if problem]
    for index, (candidate, problem) in enumerate(invalid, start=1):
        yield Outcome(candidate, error=problem), len(runnable) + len(invalid) - index
    if not runnable:
        return
    pending: dict[Future, Candidate] = {}
    # spawn: a forked child would inherit this process's thread pools and locks
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=get_context("spawn"),
        initializer=_load_folds,
        initargs=(str(folds),),
    ) as pool:
        for candidate, train in runnable:
            pending[pool.submit(_validate_in_worker, train, features, top_k)] = candidate
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                candidate = pending.pop(future)
                metrics, seconds, error = future.result()
                yield Outcome(candidate, metrics, error, seconds), len(pending)

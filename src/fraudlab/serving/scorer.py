"""Online scoring without HTTP: what the service does with transactions and labels.

A ``Scorer`` takes groups of transactions ("jobs": one request each) and scores them together,
so concurrent requests share one history read, one feature computation, one model call and one
durable write (group commit). Within a call, transactions are scored in (time, id) order and
see each other as if they had arrived one by one; a job whose ids conflict with stored or
earlier transactions is refused whole and stores nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from xgboost import XGBClassifier

from fraudlab.core.params import FeaturesParams
from fraudlab.features.names import feature_names, history_needed
from fraudlab.integrity.lock import IntegrityError, recorded, verify_file
from fraudlab.modeling.artifact import ModelArtifact, load_model
from fraudlab.serving.clock import Clock, Window
from fraudlab.serving.health import StoreUnavailableError
from fraudlab.serving.live import LiveState
from fraudlab.serving.store import HistoryStore, StaleError, Transaction
from fraudlab.serving.treepredict import compile_booster

log = logging.getLogger(__name__)

# Pruning per scoring round: stored rows deleted (at most) per new transaction, so the store
# stays within the windows' reach plus what a few rounds add, and no round stalls on a sweep.
# In memory, the keys a round touches are trimmed as they are merged; a sweep of a key per new
# transaction, at most a few dozen per round, finds the idle ones.
_PRUNE_ROWS_PER_TX = 2
_SWEEP_KEYS_PER_ROUND = 64
# up to this many rows the compiled trees beat one Booster call (~0.35 ms whatever the rows)
_COMPILED_ROWS = 32
# a shared store refuses a round whose view another process's write made stale; the round is
# computed again with that write taken in. Each refusal means another round committed, so this
# bounds only a process that loses to others this many times in a row
_STALE_ATTEMPTS = 50


@dataclass(frozen=True)
class ServingConfig:
    """What the evaluate stage chose for serving (models/serving.json)."""

    model_md5: str
    threshold: float
    threshold_rule: str


def read_serving_config(
    path: str | Path, *, lock_path: str | Path, model_md5: str
) -> ServingConfig:
    """serving.json, checked against dvc.lock and tied to the model being served."""
    verify_file(path, lock_path=lock_path)
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    try:
        config = ServingConfig(
            model_md5=str(raw["model_md5"]),
            threshold=float(raw["threshold"]),
            threshold_rule=str(raw["threshold_rule"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{path}: not a serving config ({exc}); rerun `dvc repro`") from None
    if config.model_md5 != model_md5:
        raise IntegrityError(
            f"{path} was written for model {config.model_md5}, not the model being served "
            f"({model_md5}); run `dvc repro evaluate`"
        )
    return config


def row_scorer(pipeline: Pipeline) -> Callable[[np.ndarray], np.ndarray]:
    """Fraud probabilities (float64) of a feature matrix, equal to ``predict_proba``'s.

    For the default scaler + XGBoost pipeline, the scaler's arithmetic and then, for the few
    rows of a scoring round, the trees walked in NumPy (``treepredict``, checked against XGBoost
    here), for more rows one Booster call on a single thread: predicting on a small frame
    through scikit-learn costs several times more, and several threads per prediction make
    latency jump on a busy machine."""
    steps = [step for _, step in pipeline.steps]
    if (
        len(steps) == 2
        and type(steps[0]) is StandardScaler
        and isinstance(steps[1], XGBClassifier)
        and steps[0].with_mean
        and steps[0].with_std
    ):
        scaler, model = steps
        booster = model.get_booster().copy()
        booster.set_param({"nthread": 1})
        mean, scale = scaler.mean_, scaler.scale_
        trees = compile_booster(booster)
        if trees is not None and not trees.agrees(booster):
            log.warning("the compiled trees differ from XGBoost's predictions: not used")
            trees = None

        def predict(matrix: np.ndarray) -> np.ndarray:
            # the same operations, in the same order, as StandardScaler.transform
            scaled = (matrix - mean) / scale
            if trees is not None and len(scaled) <= _COMPILED_ROWS:
                return trees(scaled).astype(np.float64)
            return booster.inplace_predict(scaled, validate_features=False).astype(np.float64)

        return predict
    columns = list(pipeline.feature_names_in_)

    def predict_any(matrix: np.ndarray) -> np.ndarray:
        with threadpool_limits(limits=1):
            frame = pd.DataFrame(matrix, columns=columns)
            return pipeline.predict_proba(frame)[:, 1].astype(np.float64)

    return predict_any


@dataclass(frozen=True)
class Refused:
    """A job refused whole: nothing of it was stored."""

    status: int
    message: str


class Scorer:
    """Scores transactions and records labels against one history store."""

    def __init__(
        self,
        model: ModelArtifact,
        *,
        config: ServingConfig,
        store: HistoryStore,
        clock: Clock,
    ) -> None:
        self.model = model
        self.config = config
        self.store = store
        self.clock = clock
        self.params: FeaturesParams = model.features_config
        self.names = feature_names(self.params)
        if tuple(self.names) != model.features:
            raise IntegrityError(
                f"the model's features {list(model.features)} are not the ones its feature "
                f"params give ({self.names}); retrain"
            )
        self.predict = row_scorer(model.pipeline)
        # beyond the longest window by as much as a transaction may be late: every accepted
        # transaction finds every row its windows cover (see ``clock``)
        self.keep = retention_ns(self.params, clock)
        self.live = LiveState(store, self.params)
        # what the last ``score`` call scored anew, for the service's metrics
        self.last_scores = np.zeros(0)
        self.last_features = np.zeros((0, len(self.names)))
        self.last_late = 0  # of those, older than their customer's newest stored transaction
        self.last_stale = 0  # rounds computed again because another process wrote first
        # one snapshot of the store (no lock: a reload loads while the scoring goes on); the
        # first round catches up with what was written since
        self.live.refresh()

    @property
    def model_version(self) -> str:
        return self.config.model_md5

    def _answer(self, tx: Transaction, *, score: float, features: np.ndarray) -> str:
        return orjson.dumps(
            {
                "transaction_id": tx.transaction_id,
                "score": score,
                "fraud": score >= self.config.threshold,
                "threshold": self.config.threshold,
                "model_version": self.model_version,
                "features": dict(zip(self.names, features.tolist(), strict=True)),
            }
        ).decode()

    def score(self, jobs: Sequence[Sequence[Transaction]]) -> list[list[str] | Refused]:
        """Score every job's transactions; per job, the answers (JSON, in the job's order) or
        why it was refused. Everything scored is stored durably before this returns."""
        self.last_stale = 0
        for _ in range(_STALE_ATTEMPTS):
            try:
                return self._round(jobs)
            except StaleError:
                self.last_stale += 1
        raise StoreUnavailableError(
            f"busy: {_STALE_ATTEMPTS} rounds in a row found the shared store moved on before "
            "their write"
        )

    def _round(self, jobs: Sequence[Sequence[Transaction]]) -> list[list[str] | Refused]:
        self.last_scores, self.last_late = np.zeros(0), 0
        self.last_features = self.last_features[:0]
        with self.store.exclusive():
            changes, stored = self.store.read(
                self.live.cursor, (tx.transaction_id for job in jobs for tx in job)
            )
            self.live.refresh(changes)
            window = self.clock.window(self.live.newest)
            accepted: dict[int, Transaction] = {}
            outcomes: list[list[int] | Refused] = []
            for job in jobs:
                outcomes.append(self._admit(job, stored=stored, accepted=accepted, window=window))
            new = sorted(
                (tx for tx in accepted.values() if tx.transaction_id not in stored),
                key=lambda tx: (tx.time, tx.transaction_id),
            )
            answers = {tx_id: item.answer for tx_id, item in stored.items()}
            if new:
                answers.update(self._score_new(new))
        return [
            outcome if isinstance(outcome, Refused) else [answers[tx_id] for tx_id in outcome]
            for outcome in outcomes
        ]

    def _admit(
        self,
        job: Sequence[Transaction],
        *,
        stored: dict,
        accepted: dict[int, Transaction],
        window: Window,
    ) -> list[int] | Refused:
        """The job's ids if none conflicts with a stored transaction, an earlier job's or
        another of its own, and its new transactions are inside the accepted window (which
        they then move, with the data clock); the job's new transactions join ``accepted``."""
        mine: dict[int, Transaction] = {}
        for tx in job:
            earlier = mine.get(tx.transaction_id) or accepted.get(tx.transaction_id)
            if earlier is None and tx.transaction_id in stored:
                earlier, answer = stored[tx.transaction_id]
                if answer is None:
                    return Refused(
                        409,
                        f"transaction_id {tx.transaction_id} is in the seeded history: it was "
                        "never scored by this service",
                    )
            if earlier is not None and earlier.content() != tx.content():
                return Refused(
                    409,
                    f"transaction_id {tx.transaction_id} is already stored with other content",
                )
            mine[tx.transaction_id] = tx
        new = sorted(
            (tx for tx in mine.values() if tx.transaction_id not in stored),
            key=lambda tx: tx.time,
        )
        mark = window.mark
        for tx in new:
            refusal = window.refusal(tx.time)
            if refusal is not None:
                window.mark = mark  # nothing of a refused job moves the clock
                return Refused(422, f"transaction {tx.transaction_id}: {refusal}")
            window.accept(tx.time)
        accepted.update(mine)
        return [tx.transaction_id for tx in job]

    def _score_new(self, new: list[Transaction]) -> dict[int, str]:
        live = self.live
        now = self.clock.now(max(new[-1].time, live.newest or new[-1].time))
        matrix, self.last_late = live.score(new)
        scores = self.predict(matrix)
        answers = {
            tx.transaction_id: self._answer(tx, score=score, features=features)
            for tx, score, features in zip(new, scores.tolist(), matrix, strict=True)
        }
        # rows no window can reach any more go a little per round (no stall), in the same
        # durable write as the new ones
        before = now - self.keep
        try:
            cursor = self.store.add_scored(
                new,
                [answers[tx.transaction_id] for tx in new],
                prune_before=before,
                prune_limit=_PRUNE_ROWS_PER_TX * len(new),
                expect=live.cursor,
            )
        except BaseException:
            live.rollback(new)  # the write was rolled back: so are the new rows in memory
            raise
        live.commit(cursor)
        live.forget(before=before, budget=min(len(new), _SWEEP_KEYS_PER_ROUND))
        self.last_scores, self.last_features = scores, matrix
        return answers

    def label(self, labels: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """Record confirmed labels durably (UnknownTransactionError: none recorded); the
        changes of labels already given (transaction_id, from, to)."""
        with self.store.exclusive():
            return self.store.label(labels)


def load_scorer(
    *,
    model_path: str | Path,
    serving_path: str | Path,
    lock_path: str | Path,
    store: HistoryStore,
    clock: Clock,
) -> Scorer:
    """Everything the service serves, each file checked against dvc.lock before use."""
    model = load_model(model_path, lock_path=lock_path)  # its bytes matched this entry
    model_md5 = recorded(model_path, lock_path=lock_path).md5
    config = read_serving_config(serving_path, lock_path=lock_path, model_md5=model_md5)
    return Scorer(model, config=config, store=store, clock=clock)


def retention_ns(params: FeaturesParams, clock: Clock) -> int:
    """How long rows are kept behind the clock: the longest window plus the lateness
    accepted."""
    return max(span.value for span in history_needed(params)) + clock.late

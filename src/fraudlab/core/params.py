"""Typed, validated views of the sections of ``params.yaml``.

Each stage uses only the sections ``dvc.yaml`` declares for it, but every stage validates the whole
file first, so a typo in a later stage's section fails in whichever stage runs first, not after
minutes of training. Each section loads into a frozen model that rejects unknown keys, and
numbers are strict: ``true`` is not 1 and ``"7"`` is not 7.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fraudlab.core import schema
from fraudlab.core.errors import UserError
from fraudlab.core.io import read_yaml

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]
NonNegativeFloat = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    # strict: YAML's true, "7" or 7.5 are not silently taken for an integer (an int is still a
    # valid float). Dates are the exception: YAML gives them as text when quoted.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


Day = Annotated[dt.date, Field(strict=False)]


class DriftParams(_Section):
    """An optional change of the simulated world from ``start_day`` on (monitoring's tests):
    ``amount_inflation`` multiplies every amount by 1 + ``strength`` (labels unchanged: the
    inputs drift and the model's amount rules go stale); ``terminal_surge`` compromises
    ``strength`` x ``compromised_terminals_per_day`` more terminals a day (rounded; a fraud
    pattern at a rate the model never saw); ``night_shift`` moves a share ``strength`` of the
    transactions to between midnight and 6 am (customers shifting their spending hours);
    ``terminals_dark`` takes a share ``strength`` of the terminals out of service, so customers
    pay at another terminal in reach, or not at all. ``none`` leaves the data byte for byte as
    before."""

    scenario: Literal["none", "amount_inflation", "terminal_surge", "night_shift", "terminals_dark"]
    start_day: NonNegativeInt
    strength: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def _a_share(self) -> DriftParams:
        if self.scenario in ("night_shift", "terminals_dark") and self.strength > 1:
            raise ValueError(f"strength is a share for {self.scenario}: {self.strength} > 1")
        return self


class SimulateParams(_Section):
    seed: NonNegativeInt
    n_customers: PositiveInt
    n_terminals: PositiveInt
    n_days: PositiveInt
    start_date: Day
    radius: Annotated[float, Field(gt=0)]
    compromised_terminals_per_day: NonNegativeInt
    compromised_terminal_days: PositiveInt
    compromised_customers_per_day: NonNegativeInt
    compromised_customer_days: PositiveInt
    high_amount_threshold: Annotated[float, Field(gt=0)]
    # None: one generator for the whole population (the reference data). A number: independent
    # blocks of this many customers, each drawn from a generator seeded with (seed, block), so
    # the data are the same however the blocks are spread over processes, and a block at a
    # time fits in memory at any size (docs/scaling-out.md).
    customers_per_block: PositiveInt | None
    drift: DriftParams


class SourceParams(_Section):
    """Where the transactions come from and how their layout maps onto the canonical schema."""

    path: str
    # canonical name -> the source's column name, for the names that differ
    columns: dict[str, str]
    timestamp_unit: Literal["s", "ms", "us", "ns"] | None  # epoch numbers; None: dates/text
    timezone: str  # zone of timestamps written without an offset
    fraud_values: list[str | int | bool]
    legit_values: list[str | int | bool]
    # customer_id / terminal_id read as text (card tokens, merchant codes), kept exactly as
    # given; every other id is an exact int64 (SPEC section 2), never read through a float.
    text_ids: list[Literal["customer_id", "terminal_id"]]
    # Source columns besides the canonical ones to carry into the clean data; the rest are not
    # read at all (memory follows the columns used, not the file's width).
    extra_columns: Literal["all"] | list[str]

    @model_validator(mode="after")
    def _consistent(self) -> SourceParams:
        unknown = sorted(set(self.columns) - set(schema.REQUIRED_COLUMNS))
        if unknown:
            raise ValueError(
                f"columns maps unknown canonical name(s) {unknown}; "
                f"canonical names: {list(schema.REQUIRED_COLUMNS)}"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone '{self.timezone}'") from None
        both = {str(v).lower() for v in self.fraud_values} & {
            str(v).lower() for v in self.legit_values
        }
        if both:
            raise ValueError(f"values listed as both fraud and legit: {sorted(both)}")
        return self


class StorageParams(_Section):
    """How the large datasets (raw, clean, features) are laid out: a directory of Parquet
    parts of ``rows_per_part`` rows in (time, id) order. The same files on every engine."""

    rows_per_part: PositiveInt


class ValidateParams(_Section):
    max_rejected_share: Share
    example_values: PositiveInt
    # Transactions dated outside [earliest_date, latest_date] (inclusive days) are rejected; a
    # whole file outside usually means a wrong source.timestamp_unit or timezone.
    earliest_date: Day
    latest_date: Day

    @model_validator(mode="after")
    def _ordered(self) -> ValidateParams:
        if self.earliest_date > self.latest_date:
            raise ValueError(
                f"earliest_date {self.earliest_date} is after latest_date {self.latest_date}"
            )
        return self


class FeaturesParams(_Section):
    # Groups of features beyond the handbook's 15 (features.py, docs/features.md); [] gives
    # the handbook's set.
    groups: list[Literal["amount_ratios", "last_payments", "anomaly_counts", "known_labels"]]
    customer_windows_days: list[PositiveInt]
    terminal_windows_days: list[PositiveInt]
    # A label becomes known this many days after its transaction; at least one day, or the
    # current transaction's own label would enter its terminal features.
    label_delay_days: PositiveInt
    night_end_hour: Annotated[int, Field(ge=0, le=23)]
    # Read by the groups only. The longest amount window is also the look-back of the last
    # payments' statistics, which keeps the online scorer's history bounded.
    amount_windows_days: list[PositiveInt]
    last_payments: Annotated[int, Field(ge=2)]
    anomaly_factor: Annotated[float, Field(gt=1)]
    anomaly_windows_days: list[PositiveInt]

    @model_validator(mode="after")
    def _windows_distinct(self) -> FeaturesParams:
        for name in (
            "customer_windows_days",
            "terminal_windows_days",
            "amount_windows_days",
            "anomaly_windows_days",
        ):
            windows = getattr(self, name)
            if not windows or len(set(windows)) != len(windows):
                raise ValueError(f"{name} must be a non-empty list of distinct days: {windows}")
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"groups must be distinct: {self.groups}")
        return self


class SplitParams(_Section):
    train_start: Day
    train_days: PositiveInt
    test_days: PositiveInt
    n_folds: PositiveInt
    # the prequential test: this many test periods from the test split's on, each scored by the
    # model refit on the training period before it; 0: none
    test_folds: NonNegativeInt


class LogisticRegressionParams(_Section):
    # scikit-learn >= 1.8 expresses the penalty through these two: l1_ratio 0 is L2, 1 is L1,
    # between is elastic net; a very large C means no penalty.
    C: Annotated[float, Field(gt=0)]
    l1_ratio: Share
    # Cubic B-splines with this many knots per feature before the scaler make the linear model
    # additive but non-linear in each feature (fraud rises steeply with amount and terminal
    # risk); 0 feeds the raw features, as the handbook's baseline did.
    spline_knots: Annotated[int, Field(ge=0)]
    solver: Literal["lbfgs", "liblinear", "saga", "newton-cg", "newton-cholesky"]
    max_iter: PositiveInt
    tol: Annotated[float, Field(gt=0)]


class RandomForestParams(_Section):
    n_estimators: PositiveInt
    max_depth: PositiveInt | None
    min_samples_split: Annotated[int, Field(ge=2)]
    min_samples_leaf: PositiveInt
    max_features: Literal["sqrt", "log2"] | Annotated[float, Field(gt=0, le=1)] | None
    criterion: Literal["gini", "entropy", "log_loss"]
    bootstrap: bool
    max_samples: Annotated[float, Field(gt=0, le=1)] | None


class XGBoostParams(_Section):
    n_estimators: PositiveInt
    max_depth: NonNegativeInt
    learning_rate: Annotated[float, Field(gt=0, le=1)]
    subsample: Annotated[float, Field(gt=0, le=1)]
    colsample_bytree: Annotated[float, Field(gt=0, le=1)]
    min_child_weight: Annotated[float, Field(ge=0)]
    gamma: Annotated[float, Field(ge=0)]
    reg_lambda: Annotated[float, Field(ge=0)]
    reg_alpha: Annotated[float, Field(ge=0)]
    tree_method: Literal["exact", "approx", "hist"]
    max_bin: Annotated[int, Field(ge=2)]
    # xgboost >= 2 estimates base_score from the labels; the handbook's results used 0.5.
    base_score: Annotated[float, Field(gt=0, lt=1)] | None


ModelFamily = Literal["logistic_regression", "random_forest", "xgboost"]


class TrainParams(_Section):
    model: ModelFamily
    imbalance: Literal["none", "class_weight", "scale_pos_weight"]
    seed: NonNegativeInt
    n_jobs: PositiveInt
    # 0: fit in this process. N: XGBoost's boosting rounds run through xgboost.dask on N
    # workers, the rows cut into N equal ranges; the model depends on N (not on the engine)
    dask_workers: NonNegativeInt
    logistic_regression: LogisticRegressionParams
    random_forest: RandomForestParams
    xgboost: XGBoostParams

    @model_validator(mode="after")
    def _dask_fits_family(self) -> TrainParams:
        if self.dask_workers and self.model != "xgboost":
            raise ValueError("dask_workers applies to model 'xgboost' only; set it to 0")
        if self.dask_workers and self.xgboost.tree_method == "exact":
            raise ValueError(
                "dask_workers needs xgboost.tree_method 'hist' or 'approx': xgboost.dask "
                "cannot grow exact trees"
            )
        return self

    @model_validator(mode="after")
    def _imbalance_fits_family(self) -> TrainParams:
        if self.imbalance == "scale_pos_weight" and self.model != "xgboost":
            raise ValueError("imbalance 'scale_pos_weight' applies to model 'xgboost' only")
        if self.imbalance == "class_weight" and self.model == "xgboost":
            raise ValueError(
                "imbalance 'class_weight' applies to logistic_regression and "
                "random_forest; use 'scale_pos_weight' for xgboost"
            )
        return self


class CostParams(_Section):
    """What a decision costs, in the currency of tx_amount."""

    missed_fraud: NonNegativeFloat  # each fraud not alerted: a fixed part ...
    missed_fraud_amount_share: NonNegativeFloat  # ... plus this share of its amount
    false_alert: NonNegativeFloat  # each legitimate transaction alerted (an investigation)


class EvaluateParams(_Section):
    top_k: PositiveInt
    # How the operating threshold is chosen, on validation scores only: a fixed alert budget
    # (cards a day), or the lowest total cost.
    threshold: Literal["alert_budget", "cost"]
    alert_budget_cards_per_day: PositiveInt
    costs: CostParams
    score_bins: Annotated[int, Field(ge=2)]


class MonitorParams(_Section):
    """Alert levels of the ``monitor`` stage, on one drift statistic (docs/monitoring.md)."""

    statistic: Literal["psi", "ks", "wasserstein"]
    warn: Annotated[float, Field(gt=0)]
    act: Annotated[float, Field(gt=0)]
    decay: Annotated[float, Field(gt=0, lt=1)]  # AP drop below the baseline counted as decay
    label_shift_p: Annotated[float, Field(gt=0, lt=1)]  # frauds' share differs: Fisher p below
    strict: bool  # the stage fails when an alert fires or performance decays (cron, CI)

    @model_validator(mode="after")
    def _ordered(self) -> MonitorParams:
        if self.warn >= self.act:
            raise ValueError(f"warn ({self.warn}) must be below act ({self.act})")
        return self


SECTIONS: dict[str, type[_Section]] = {
    "simulate": SimulateParams,
    "source": SourceParams,
    "storage": StorageParams,
    "validate": ValidateParams,
    "features": FeaturesParams,
    "split": SplitParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "monitor": MonitorParams,
}


class ParamsError(UserError):
    """``params.yaml`` is missing a section or a section does not match its schema."""


def _problems(name: str, exc: ValidationError) -> list[str]:
    """One 'section.key.path: message' per error; a whole-section rule names the section."""
    return [
        f"{'.'.join([name, *(str(p) for p in err['loc'])])}: {err['msg']}" for err in exc.errors()
    ]


def parse_section(name: str, raw: object) -> _Section:
    """Validate one raw section; the error names the file section and every bad key."""
    try:
        return SECTIONS[name].model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(
            f"invalid params section '{name}': {'; '.join(_problems(name, exc))}"
        ) from None


def _parse_all(raw: dict, path: str | Path) -> dict[str, _Section]:
    """Every section in the file, validated; unknown sections and every bad key of every
    section in one error."""
    problems = [f"unknown section '{name}'" for name in raw if name not in SECTIONS]
    parsed = {}
    for name, value in raw.items():
        if name in SECTIONS:
            try:
                parsed[name] = SECTIONS[name].model_validate(value)
            except ValidationError as exc:
                problems += _problems(name, exc)
    if problems:
        raise ParamsError(f"{path}: invalid params: " + "; ".join(problems))
    return parsed


def load_params(path: str | Path, *sections: str) -> dict[str, _Section]:
    """Read ``params.yaml``, validate every section in it, and return the requested ones."""
    raw = read_yaml(path) or {}
    missing = [s for s in sections if isinstance(raw, dict) and s not in raw]
    if missing:
        raise ParamsError(f"{path}: missing params section(s): {', '.join(missing)}")
    parsed = parse_params(raw, path)
    return {name: parsed[name] for name in sections}


def parse_params(raw: object, path: str | Path) -> dict[str, _Section]:
    """Every section of params as read (e.g. with a search's values set), validated; ``path``
    names where they came from in the error."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return _parse_all(raw, path)

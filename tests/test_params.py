"""params.yaml: strict loading, and agreement between dvc.yaml and what each stage reads."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import pytest
import yaml

from fraudlab.core.params import FeaturesParams, ParamsError, load_params
from fraudlab.features.names import GROUPS

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_committed_params_load(tmp_path):
    loaded = load_params(
        ROOT / "params.yaml",
        "simulate",
        "source",
        "validate",
        "features",
        "split",
        "train",
        "evaluate",
    )
    assert loaded["train"].model in {"logistic_regression", "random_forest", "xgboost"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["train"]["xgboost"].update(max_dept=3), r"train\.xgboost\.max_dept"),
        (
            lambda p: p["train"]["random_forest"].pop("n_estimators"),
            r"train\.random_forest\.n_estimators: Field required",
        ),
        (lambda p: p["train"].update(model="svm"), r"train\.model"),
        (
            lambda p: p["train"].update(imbalance="scale_pos_weight", model="random_forest"),
            "applies to model 'xgboost' only",
        ),
        (lambda p: p["features"].update(label_delay_days=0), r"features\.label_delay_days"),
        (lambda p: p["features"].update(customer_windows_days=[7, 7]), "distinct"),
        (lambda p: p["features"].update(groups=["velocity"]), r"features\.groups\.0"),
        (lambda p: p["features"].update(groups=["known_labels"] * 2), "groups must be distinct"),
        (lambda p: p["features"].update(anomaly_factor=1.0), r"features\.anomaly_factor"),
        (lambda p: p["features"].pop("amount_windows_days"), r"features\.amount_windows_days"),
    ],
)
def test_bad_params_fail_at_load_naming_the_key(tmp_path, edit, message):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=message):
        load_params(path, "train", "features")


def test_missing_section_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {}\n")
    with pytest.raises(ParamsError, match=r"missing params section.*evaluate"):
        load_params(path, "evaluate")


def _stage_module(stage: dict) -> str:
    words = stage["cmd"].split()
    return words[words.index("-m") + 1]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_exactly_the_params_sections_it_reads(name):
    module = importlib.import_module(_stage_module(STAGES[name]))
    assert sorted(STAGES[name].get("params", [])) == sorted(module.SECTIONS)


def _write(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["split"].update(n_folds=True), r"split\.n_folds: Input should be a valid int"),
        (lambda p: p["split"].update(n_folds="7"), r"split\.n_folds: Input should be a valid int"),
        (lambda p: p["split"].update(n_folds=2.5), r"split\.n_folds: Input should be a valid int"),
        (lambda p: p["train"].update(n_jobs="2"), r"train\.n_jobs: Input should be a valid int"),
        (
            lambda p: p["evaluate"].update(top_k=True),
            r"evaluate\.top_k: Input should be a valid int",
        ),
        (
            lambda p: p["train"]["xgboost"].update(learning_rate="0.3"),
            r"train\.xgboost\.learning_rate: Input should be a valid number",
        ),
        (lambda p: p["simulate"].update(radius=True), r"simulate\.radius"),
    ],
)
def test_numbers_are_strict(tmp_path, edit, message):
    with pytest.raises(ParamsError, match=message):
        load_params(_write(tmp_path, edit), "split")


def test_an_int_is_a_valid_float_and_quoted_dates_load(tmp_path):
    path = _write(tmp_path, lambda p: p["train"]["xgboost"].update(learning_rate=1))
    assert load_params(path, "train")["train"].xgboost.learning_rate == 1.0
    assert str(load_params(path, "split")["split"].train_start) == "2018-07-25"


def test_a_later_stage_typo_fails_the_first_stage(tmp_path):
    """simulate runs first: it must find the typo in evaluate, not leave it to the last stage."""
    path = _write(tmp_path, lambda p: p["evaluate"].update(top_kk=100))
    with pytest.raises(ParamsError, match=r"evaluate\.top_kk: Extra inputs are not permitted"):
        load_params(path, "simulate")


def test_every_problem_in_the_file_is_listed_at_once(tmp_path):
    def edit(p):
        p["train"].update(n_jobs=0)
        p["evaluate"].update(top_k="100")
        p["evalute"] = {}

    with pytest.raises(ParamsError) as raised:
        load_params(_write(tmp_path, edit), "simulate")
    message = str(raised.value)
    assert "unknown section 'evalute'" in message
    assert "train.n_jobs" in message
    assert "evaluate.top_k" in message


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["source"].update(timezone="Mars/Olympus"),
            r"invalid params: source: Value error, unknown timezone 'Mars/Olympus'",
        ),
        (
            lambda p: p["validate"].update(earliest_date="2030-01-01", latest_date="2020-01-01"),
            r"invalid params: validate: Value error, earliest_date 2030-01-01 is after",
        ),
    ],
)
def test_section_rules_name_the_section_not_an_empty_key(tmp_path, edit, message):
    with pytest.raises(ParamsError, match=message) as raised:
        load_params(_write(tmp_path, edit), "simulate")
    assert ".:" not in str(raised.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["train"].update(dask_workers=2),  # the default tree_method is exact
            r"dask_workers needs xgboost\.tree_method 'hist' or 'approx'",
        ),
        (
            lambda p: p["train"].update(dask_workers=2, model="random_forest"),
            r"dask_workers applies to model 'xgboost' only",
        ),
        (lambda p: p["train"].update(dask_workers=-1), r"train\.dask_workers"),
    ],
)
def test_training_on_dask_workers_is_refused_where_it_cannot_work(tmp_path, edit, message):
    with pytest.raises(ParamsError, match=message):
        load_params(_write(tmp_path, edit), "train")


def test_the_groups_params_accept_are_the_groups_features_computes():
    field = FeaturesParams.model_fields["groups"].annotation
    assert typing.get_args(typing.get_args(field)[0]) == GROUPS


def test_params_are_read_in_dvcs_yaml_dialect(tmp_path):
    """`dvc exp run -S` rewrites params.yaml in YAML 1.2 and drops the quotes of "yes" / "no":
    read as YAML 1.1 they would become booleans and a yes/no source would stop parsing."""
    lines = (ROOT / "params.yaml").read_text().splitlines()
    rewritten = "\n".join(
        "  fraud_values: [1, 'true', fraud, yes]"
        if line.startswith("  fraud_values:")
        else "  legit_values: [0, 'false', legit, no]"
        if line.startswith("  legit_values:")
        else line
        for line in lines
    )
    path = tmp_path / "params.yaml"
    path.write_text(rewritten)
    source = load_params(path, "source")["source"]
    assert "yes" in source.fraud_values
    assert "no" in source.legit_values
    assert yaml.safe_load(rewritten)["source"]["fraud_values"][-1] is True  # what 1.1 reads

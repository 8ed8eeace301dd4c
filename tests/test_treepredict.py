"""The compiled trees give XGBoost's probabilities bit for bit, or are not used."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import xgboost

from fraudlab.serving.treepredict import compile_booster


def _booster(*, objective: str = "binary:logistic", **params) -> xgboost.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6))
    x[rng.random(x.shape) < 0.1] = np.nan  # missing values: the default direction is learnt
    y = (np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * x[:, 2] > 0.3).astype(int)
    if objective.startswith("multi"):
        y = y + (x[:, 3] > 1)
    settings = {"objective": objective, "max_depth": 4, "eta": 0.3, "seed": 0, **params}
    if objective.startswith("multi"):
        settings["num_class"] = 3
    return xgboost.train(settings, xgboost.DMatrix(x, label=y), num_boost_round=30)


@pytest.mark.parametrize(
    "params",
    [{}, {"base_score": 0.2}, {"max_depth": 7}, {"tree_method": "exact"}],
    ids=["default", "base-score", "deep", "exact"],
)
def test_compiled_trees_equal_xgboost_bit_for_bit(params):
    booster = _booster(**params)
    trees = compile_booster(booster)
    assert trees is not None
    assert trees.agrees(booster)
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(500, 6))
    rows[rng.random(rows.shape) < 0.2] = np.nan
    expected = booster.inplace_predict(rows)
    for batch in (rows, rows[:1], rows[:7]):
        got = trees(batch)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), expected[: len(batch)].view(np.uint32))


@pytest.mark.parametrize("objective", ["reg:squarederror", "multi:softprob"])
def test_other_models_are_left_to_xgboost(objective):
    assert compile_booster(_booster(objective=objective)) is None


def test_a_predictor_off_by_one_bit_is_caught_by_the_check():
    booster = _booster()
    trees = compile_booster(booster)
    # one threshold moved to the next float: only rows exactly at it go the other way
    split = trees.split.copy()
    inner = np.flatnonzero(trees.left != np.arange(len(trees.left)))[0]
    split[inner] = np.nextafter(split[inner], np.float32(np.inf))
    assert not dataclasses.replace(trees, split=split).agrees(booster)

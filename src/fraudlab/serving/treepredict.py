"""XGBoost's binary:logistic prediction for a few rows, in NumPy, bit for bit.

``Booster.inplace_predict`` costs ~0.35 ms per call on this kind of machine whatever the number
of rows (Python wrapping, JSON config, a proxy matrix), while walking 100 depth-3 trees for one
row is microseconds of work: at the service's rates the model call was the largest fixed cost of
a scoring round. ``compile_booster`` turns a Booster into arrays walked for all trees at once.

Bit for bit means: inputs rounded to float32 as XGBoost does, ``x < split`` with missing values
sent the default way, leaf values summed in tree order in float32 from the base margin, and the
sigmoid with the C library's ``expf`` (the one XGBoost's own transform calls; NumPy's float32
``exp`` is another implementation, which can round the last bit differently).
``TreePredictor.agrees`` checks a compiled model against XGBoost on rows built to hit every
split threshold, its neighbouring floats and missing values; the service uses the compiled
path only when it agrees.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
from dataclasses import dataclass
from functools import cache

import numpy as np
from xgboost import Booster

log = logging.getLogger(__name__)

_PROBE_SPLITS = 4096  # splits probed at most (the default model has ~700)
_PROBE_SLICE = 1024  # rows compared at a time


@cache
def _libm(name: str) -> ctypes._CFuncPtr | None:
    """A float32 function of the C library (``expf``, ``logf``), as XGBoost calls it."""
    library = ctypes.util.find_library("m")
    if library is None:
        return None
    function = getattr(ctypes.CDLL(library), name)
    function.restype = ctypes.c_float
    function.argtypes = [ctypes.c_float]
    return function


@dataclass(frozen=True)
class TreePredictor:
    """Every tree's nodes in flat arrays; a leaf points to itself, so ``depth`` steps from the
    roots land every row on its leaf in every tree."""

    roots: np.ndarray  # (trees,) node index of each tree's root
    feature: np.ndarray  # (nodes,) feature tested (0 at leaves)
    split: np.ndarray  # (nodes,) float32 threshold, or the leaf value at leaves
    left: np.ndarray  # (nodes,) next node when x < split (or missing and default left)
    right: np.ndarray
    default_left: np.ndarray  # (nodes,) bool
    depth: int
    base_margin: np.float32
    expf: ctypes._CFuncPtr

    def margin(self, matrix: np.ndarray) -> np.ndarray:
        values = np.asarray(matrix, dtype=np.float32)
        rows = np.arange(len(values))[:, None]
        node = np.broadcast_to(self.roots, (len(values), len(self.roots)))
        for _ in range(self.depth):
            x = values[rows, self.feature[node]]
            go_left = np.where(np.isnan(x), self.default_left[node], x < self.split[node])
            node = np.where(go_left, self.left[node], self.right[node])
        # summed one tree after another, as XGBoost does: a pairwise sum rounds differently
        terms = np.empty((len(values), len(self.roots) + 1), dtype=np.float32)
        terms[:, 0] = self.base_margin
        terms[:, 1:] = self.split[node]
        return np.cumsum(terms, axis=1, dtype=np.float32)[:, -1]

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        """Fraud probabilities (float32, as XGBoost returns them)."""
        one = np.float32(1)
        exp = np.array([self.expf(-m) for m in self.margin(matrix).tolist()], dtype=np.float32)
        return one / (one + exp)

    def agrees(self, booster: Booster, *, seed: int = 0) -> bool:
        """Whether this predictor gives XGBoost's probabilities bit for bit on rows at, just
        below and just above every threshold, with missing values and random values."""
        matrix = _probe_rows(self, n_features=booster.num_features(), seed=seed)
        expected = booster.inplace_predict(matrix, validate_features=False)
        # in slices: the walk holds a (rows x trees) array
        for start in range(0, len(matrix), _PROBE_SLICE):
            got = self(matrix[start : start + _PROBE_SLICE])
            if not np.array_equal(
                got.view(np.uint32), expected[start : start + _PROBE_SLICE].view(np.uint32)
            ):
                return False
        return True


def _probe_rows(predictor: TreePredictor, *, n_features: int, seed: int) -> np.ndarray:
    inner = np.flatnonzero(predictor.left != np.arange(len(predictor.left)))
    rng = np.random.default_rng(seed)
    if len(inner) > _PROBE_SPLITS:  # a large model: a sample of its splits
        inner = np.sort(rng.choice(inner, size=_PROBE_SPLITS, replace=False))
    thresholds = predictor.split[inner]
    features = predictor.feature[inner]
    values = np.concatenate(
        [
            thresholds,
            np.nextafter(thresholds, np.float32(-np.inf)),
            np.nextafter(thresholds, np.float32(np.inf)),
        ]
    )
    columns = np.tile(features, 3)
    # each row: random values, one feature set to a threshold-derived value, a few missing
    matrix = rng.normal(scale=3.0, size=(len(values), n_features)).astype(np.float32)
    matrix[np.arange(len(values)), columns] = values
    matrix[rng.random(matrix.shape) < 0.05] = np.nan
    spread = rng.normal(scale=3.0, size=(len(values), n_features)).astype(np.float32)
    # and rows whose every feature sits on some threshold of that feature
    on_splits = spread.copy()
    for feature in range(n_features):
        mine = values[columns == feature]
        if len(mine):
            on_splits[:, feature] = rng.choice(mine, size=len(values))
    return np.concatenate([matrix, spread, on_splits])


def compile_booster(booster: Booster) -> TreePredictor | None:
    """The booster as a ``TreePredictor``, or None for what it does not cover (another
    objective, categorical splits, several outputs, DART, no C library ``expf``)."""
    expf, logf = _libm("expf"), _libm("logf")
    model = json.loads(booster.save_raw("json"))["learner"]
    gradient = model["gradient_booster"]
    if (
        expf is None
        or logf is None
        or model["objective"]["name"] != "binary:logistic"
        or gradient["name"] != "gbtree"
        or int(model["learner_model_param"].get("num_target", 1)) != 1
        or int(gradient["model"]["gbtree_model_param"]["num_parallel_tree"]) != 1
        or any(any(tree["split_type"]) for tree in gradient["model"]["trees"])
    ):
        return None
    trees = gradient["model"]["trees"]
    sizes = [len(tree["left_children"]) for tree in trees]
    starts = np.cumsum([0, *sizes])[:-1]
    feature, split, left, right, default_left, depths = [], [], [], [], [], []
    for start, tree in zip(starts, trees, strict=True):
        own = np.arange(len(tree["left_children"])) + start
        children = np.array(tree["left_children"]), np.array(tree["right_children"])
        leaf = children[0] == -1
        feature.append(np.where(leaf, 0, tree["split_indices"]))
        split.append(np.array(tree["split_conditions"], dtype=np.float64).astype(np.float32))
        left.append(np.where(leaf, own, children[0] + start))
        right.append(np.where(leaf, own, children[1] + start))
        default_left.append(np.array(tree["default_left"], dtype=bool))
        depths.append(_depth(tree["left_children"], tree["right_children"]))
    # "[5E-1]" in XGBoost 3, "5E-1" before: the prior probability, in probability space,
    # turned into a margin as XGBoost does: -logf(1.0f / p - 1.0f), all in float32
    text = model["learner_model_param"]["base_score"].strip("[]").split(",")[0]
    odds = np.float32(1) / np.float32(text) - np.float32(1)
    return TreePredictor(
        roots=starts.astype(np.intp),
        feature=np.concatenate(feature).astype(np.intp),
        split=np.concatenate(split),
        left=np.concatenate(left).astype(np.intp),
        right=np.concatenate(right).astype(np.intp),
        default_left=np.concatenate(default_left),
        depth=max(depths, default=0),
        base_margin=np.float32(-logf(float(odds))),
        expf=expf,
    )


def _depth(left: list[int], right: list[int]) -> int:
    deepest, level = 0, [(0, 0)]
    while level:
        node, depth = level.pop()
        if left[node] == -1:
            deepest = max(deepest, depth)
        else:
            level += [(left[node], depth + 1), (right[node], depth + 1)]
    return deepest

"""Drift statistics: a reference profile of a column, and how far a later sample moved from it.

The profile keeps what monitoring needs without the training data: quantile bin edges with the
share of reference values in each bin (for the PSI), summary statistics, and a grid of quantiles
that stands in for the reference sample (KS statistic and Wasserstein distance, from scipy): the
quantiles at the middles of ``QUANTILES`` equal slices, whose CDF is within about 1/QUANTILES of
the reference's and whose Wasserstein distance from it is the smallest of any that many points.

Conventions, chosen for columns that are counts, flags or heavily tied (most of the features):
* bin edges are reference values at the deciles (equal ones merged, so a 0/1 flag gets the edges
  0 and 1); bins are right-closed, ``(e[i-1], e[i]]``, the first open below and the last open
  above (empty in the reference: a value past the reference's top edge is drift);
* the PSI adds ``EPSILON`` to every share before the logarithm, so a bin empty on one side gives a
  large but finite value (the common smoothing);
* the Wasserstein distance is divided by the reference's standard deviation (by 1 when it is 0),
  so one alert level fits columns of any scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

BINS = 10
QUANTILES = 1000
EPSILON = 1e-4


@dataclass(frozen=True)
class ColumnProfile:
    """A reference column, as monitoring compares with it."""

    edges: tuple[float, ...]  # interior bin edges, increasing
    shares: tuple[float, ...]  # share of reference values per bin (len(edges) + 1)
    quantiles: tuple[float, ...]  # at (i + 0.5) / QUANTILES, i = 0 .. QUANTILES - 1
    count: int
    mean: float
    std: float

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> ColumnProfile:
        return cls(
            edges=tuple(float(x) for x in raw["edges"]),
            shares=tuple(float(x) for x in raw["shares"]),
            quantiles=tuple(float(x) for x in raw["quantiles"]),
            count=int(raw["count"]),
            mean=float(raw["mean"]),
            std=float(raw["std"]),
        )


@dataclass(frozen=True)
class Drift:
    """How far a sample moved from a reference column."""

    psi: float
    ks: float
    wasserstein: float  # in reference standard deviations
    count: int
    mean: float


def _finite(values: np.ndarray, *, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        raise ValueError(f"{name}: no values")
    if not np.isfinite(values).all():
        raise ValueError(f"{name}: {int((~np.isfinite(values)).sum())} values are not finite")
    return values


def bin_shares(values: np.ndarray, edges: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """Share of ``values`` in each right-closed bin of ``edges`` (len(edges) + 1 bins)."""
    counts = np.bincount(
        np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left"),
        minlength=len(edges) + 1,
    )
    return counts / len(values)


def profile(values: np.ndarray, *, name: str = "column") -> ColumnProfile:
    """The reference profile of one column (finite values only)."""
    values = _finite(values, name=name)
    # reference values (not interpolations) at the deciles, so ties stay whole
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:], method="inverted_cdf"))
    return ColumnProfile(
        edges=tuple(edges.tolist()),
        shares=tuple(bin_shares(values, edges).tolist()),
        quantiles=tuple(np.quantile(values, (np.arange(QUANTILES) + 0.5) / QUANTILES).tolist()),
        count=len(values),
        mean=float(values.mean()),
        std=float(values.std()),
    )


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    expected = np.asarray(reference, dtype=np.float64) + EPSILON
    actual = np.asarray(current, dtype=np.float64) + EPSILON
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def drift(reference: ColumnProfile, values: np.ndarray, *, name: str = "column") -> Drift:
    """PSI on the reference's bins, KS statistic and normalised Wasserstein distance."""
    values = _finite(values, name=name)
    stand_in = np.asarray(reference.quantiles, dtype=np.float64)
    spread = reference.std if reference.std > 0 else 1.0
    return Drift(
        psi=psi(reference.shares, bin_shares(values, reference.edges)),
        ks=float(stats.ks_2samp(stand_in, values).statistic),
        wasserstein=float(stats.wasserstein_distance(stand_in, values)) / spread,
        count=len(values),
        mean=float(values.mean()),
    )


@dataclass(frozen=True)
class ReferenceProfile:
    """The model's inputs and output on the rows it was trained on: what monitoring compares
    later weeks (and the service its recent requests) with."""

    features: dict[str, ColumnProfile]
    score: ColumnProfile

    def to_dict(self) -> dict:
        return {
            "features": {name: column.to_dict() for name, column in self.features.items()},
            "score": self.score.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> ReferenceProfile:
        return cls(
            features={name: ColumnProfile.from_dict(c) for name, c in raw["features"].items()},
            score=ColumnProfile.from_dict(raw["score"]),
        )


def reference_profile(features: dict[str, np.ndarray], *, scores: np.ndarray) -> ReferenceProfile:
    """Profiles of each feature column and of the scores, in the features' order."""
    return ReferenceProfile(
        features={name: profile(values, name=name) for name, values in features.items()},
        score=profile(scores, name="score"),
    )

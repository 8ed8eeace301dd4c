"""Drift statistics: a reference profile of a column, and how far a later sample moved from it.

The profile keeps what monitoring needs without the training data: quantile bin edges with the
share of reference values in each bin (for the PSI), summary statistics, and a grid of quantiles
that stands in for the reference sample (KS statistic and Wasserstein distance, computed here
from one sort of the sample, equal to scipy's, which a test checks): the
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

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

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
    expected = (np.asarray(reference, dtype=np.float64) + EPSILON).tolist()
    actual = (np.asarray(current, dtype=np.float64) + EPSILON).tolist()
    # libm's log and an exactly rounded sum, not NumPy's SIMD kernels: the same bits on every
    # machine, so a fresh clone elsewhere reproduces the monitoring report
    return math.fsum((a - e) * math.log(a / e) for e, a in zip(expected, actual, strict=True))


def ks_statistic(reference: np.ndarray, ordered: np.ndarray) -> float:
    """The two-sample KS statistic of ``reference`` and the sorted sample ``ordered`` (as
    ``scipy.stats.ks_2samp``), from the sample's CDF at the reference's distinct values only:
    between two of them the reference's CDF is flat, so the largest gap is at one of them or
    just below the next."""
    distinct = np.unique(reference)
    below = np.searchsorted(np.sort(reference), distinct, side="right") / len(reference)
    at = np.searchsorted(ordered, distinct, side="right") / len(ordered)
    before = np.searchsorted(ordered, distinct, side="left") / len(ordered)
    previous = np.concatenate([[0.0], below[:-1]])  # the reference's CDF just below each value
    return float(max(np.abs(below - at).max(), np.abs(previous - before).max()))


def wasserstein(reference: np.ndarray, ordered: np.ndarray) -> float:
    """The Wasserstein-1 distance of ``reference`` and the sorted sample ``ordered`` (as
    ``scipy.stats.wasserstein_distance``): the integral over p of the gap between their
    quantile functions, both flat between the breakpoints i/n and j/m."""
    quantiles = np.sort(reference)
    m, n = len(quantiles), len(ordered)
    # the two grids merged in linear time (no sort); equal steps weigh nothing
    fine, coarse = np.arange(n + 1) / n, np.arange(m + 1) / m
    steps = np.insert(fine, np.searchsorted(fine, coarse), coarse)
    middle = (steps[:-1] + steps[1:]) / 2
    at_m = np.minimum((middle * m).astype(np.int64), m - 1)  # a zero-width step at 1 -> m
    at_n = np.minimum((middle * n).astype(np.int64), n - 1)
    gap = np.abs(quantiles[at_m] - ordered[at_n])
    # a running sum adds in one fixed order on every machine; a BLAS dot product's order (and
    # so its last bits) depends on the CPU kernel it picks
    return float(np.cumsum(np.diff(steps) * gap)[-1])


def drift(reference: ColumnProfile, values: np.ndarray, *, name: str = "column") -> Drift:
    """PSI on the reference's bins, KS statistic and normalised Wasserstein distance. The sample
    is sorted once (a few ms for a million values) and every statistic read from it: scipy's
    own functions sort and search again each, several times slower at that size."""
    values = _finite(values, name=name)
    ordered = np.sort(values)
    stand_in = np.asarray(reference.quantiles, dtype=np.float64)
    spread = reference.std if reference.std > 0 else 1.0
    cuts = np.searchsorted(ordered, np.asarray(reference.edges, dtype=np.float64), side="right")
    counts = np.diff(np.concatenate([[0], cuts, [len(ordered)]]))
    return Drift(
        psi=psi(reference.shares, counts / len(ordered)),
        ks=ks_statistic(stand_in, ordered),
        wasserstein=wasserstein(stand_in, ordered) / spread,
        count=len(ordered),
        mean=float(values.mean()),
    )


def drift_columns(
    profiles: dict[str, ColumnProfile], columns: dict[str, np.ndarray], *, workers: int = 1
) -> dict[str, Drift]:
    """``drift`` of each column against its profile, in ``columns``' order; with ``workers`` > 1
    the columns run on threads (NumPy's sort and searches release the GIL). Same results."""

    def one(name: str) -> Drift:
        return drift(profiles[name], columns[name], name=name)

    if workers == 1:
        return {name: one(name) for name in columns}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(columns, pool.map(one, columns), strict=True))


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


class DriftWindow:
    """The last ``size`` scored transactions of a service process (features and score), and
    their counts per reference bin.

    Adding a round only copies its rows into a ring (a few microseconds). The counts are brought
    up to date when read (the service publishes them at most once a second, and at a scrape): the
    rows added since the last read are binned (a searchsorted per column) and the rows they
    overwrote taken out, so a read costs in proportion to the traffic since the last one, never
    a pass over the whole window on the event loop. Columns are ``features`` in the order of the
    rows added (the model's), then the score. ``counts[j, b]`` is the number of window rows in
    bin ``b`` of column ``j`` (``bin_shares``' right-closed bins); bins past a column's own
    stay 0.
    """

    def __init__(
        self,
        reference: ReferenceProfile,
        *,
        features: Sequence[str],
        size: int,
        threshold: float,
    ) -> None:
        if size < 1:
            raise ValueError(f"a drift window holds at least one transaction, not {size}")
        if sorted(features) != sorted(reference.features):
            raise ValueError(f"the reference profiles {sorted(reference.features)}, not {features}")
        profiles = [*(reference.features[name] for name in features), reference.score]
        self.columns = [*features, "score"]
        self.edges = [np.asarray(p.edges, dtype=np.float64) for p in profiles]
        self.shares = [np.asarray(p.shares, dtype=np.float64) for p in profiles]
        self.width = max(len(e) for e in self.edges) + 1
        self._offsets = np.arange(len(profiles)) * self.width
        self.size = size
        self.threshold = threshold
        self._rows = np.zeros((size, len(profiles)))
        self._bins = np.zeros((size, len(profiles)), dtype=np.int64)  # flat bin per counted cell
        self._counted = np.zeros(size, dtype=bool)
        self._counts = np.zeros((len(profiles), self.width), dtype=np.int64)
        self.filled = 0
        self._next = 0
        self._pending = 0  # rows added since the counts were last brought up to date

    def add(self, matrix: np.ndarray, scores: np.ndarray) -> None:
        """Slide the window over a round's feature rows and their scores."""
        n = min(len(scores), self.size)
        if not n:
            return
        rows = np.column_stack([matrix[-n:], scores[-n:]])
        first = min(n, self.size - self._next)  # up to the ring's end, the rest from its start
        self._rows[self._next : self._next + first] = rows[:first]
        self._rows[: n - first] = rows[first:]
        self._next = (self._next + n) % self.size
        self.filled = min(self.size, self.filled + n)
        self._pending = min(self.size, self._pending + n)

    @property
    def counts(self) -> np.ndarray:
        if self._pending:
            slots = (self._next - self._pending + np.arange(self._pending)) % self.size
            cells = self._counts.size
            overwritten = slots[self._counted[slots]]
            self._counts -= np.bincount(self._bins[overwritten].ravel(), minlength=cells).reshape(
                self._counts.shape
            )
            values = self._rows[slots]
            self._bins[slots] = (
                np.column_stack(
                    [
                        np.searchsorted(e, values[:, j], side="left")
                        for j, e in enumerate(self.edges)
                    ]
                )
                + self._offsets
            )
            self._counts += np.bincount(self._bins[slots].ravel(), minlength=cells).reshape(
                self._counts.shape
            )
            self._counted[slots] = True
            self._pending = 0
        return self._counts

    @property
    def alerted(self) -> int:
        """Transactions of the window scored at or above the threshold."""
        return int((self._rows[: self.filled, -1] >= self.threshold).sum())

    def psi(self, counts: np.ndarray | None = None) -> dict[str, float]:
        """PSI of each column over the window (or over ``counts`` of the same layout, e.g. the
        sum of several processes' windows); empty when the window is."""
        counts = self.counts if counts is None else counts
        total = counts[0].sum()
        if not total:
            return {}
        return {
            name: psi(shares, counts[j, : len(shares)] / total)
            for j, (name, shares) in enumerate(zip(self.columns, self.shares, strict=True))
        }

"""Fixed-bucket histograms: constant memory, exact Prometheus export, percentiles within a bucket.

Why fixed log-spaced buckets rather than keeping samples: memory stays constant however long the
process runs, merging and exporting to Prometheus is exact, and with 24 buckets per decade an
interpolated percentile lies within one bucket of the truth, that is within ~10% of it. Recording
is O(1) (a bisection over a fixed number of buckets); reading a percentile walks the buckets once.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

__all__ = ["LATENCY_BOUNDS", "Histogram", "prometheus_buckets"]

_PER_DECADE = 24
# 1 ms .. ~316 s, 24 buckets per decade (each bound 10**(1/24) ~ 1.10 times the previous), rounded
# to 6 significant digits so the Prometheus ``le`` labels stay readable.
LATENCY_BOUNDS: tuple[float, ...] = tuple(
    float(f"{10 ** (-3 + k / _PER_DECADE):.6g}") for k in range(0, 5 * _PER_DECADE + 13)
)
# Prometheus gets every 4th bound (6 per decade): cumulative counts at a bound are exact, and
# 34 series per histogram is what a scraper can afford per model.
_EXPORT_STRIDE = 4


class Histogram:
    """Counts of observations in fixed buckets, with interpolated percentiles.

    ``bounds`` are the inclusive upper bounds (Prometheus ``le``), strictly increasing and
    positive; one more overflow bucket catches anything larger. Not thread-safe.
    """

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        if not bounds or bounds[0] <= 0 or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError("histogram bounds must be positive and strictly increasing")
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    def record(self, value: float) -> None:
        """Add one observation. Raises ``ValueError`` for a negative or non-finite value."""
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"cannot record {value!r}: observations are finite and >= 0")
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._count += 1
        self._sum += value
        self._min = min(self._min, value)
        self._max = max(self._max, value)

    @property
    def bounds(self) -> tuple[float, ...]:
        """The upper bounds of the finite buckets."""
        return self._bounds

    @property
    def count(self) -> int:
        """How many observations were recorded."""
        return self._count

    @property
    def sum(self) -> float:
        """The sum of all observations."""
        return self._sum

    @property
    def mean(self) -> float:
        """The mean observation (``0.0`` when empty)."""
        return self._sum / self._count if self._count else 0.0

    @property
    def bucket_counts(self) -> tuple[int, ...]:
        """Per-bucket (not cumulative) counts: one per bound, then the overflow bucket."""
        return tuple(self._counts)

    def cumulative_buckets(self, stride: int = 1) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` for every ``stride``-th bound and ``+Inf``."""
        out: list[tuple[float, int]] = []
        running = 0
        for i, bound in enumerate(self._bounds):
            running += self._counts[i]
            if i % stride == 0 or i == len(self._bounds) - 1:
                out.append((bound, running))
        out.append((math.inf, self._count))
        return out

    def percentile(self, q: float) -> float | None:
        """Estimate the ``q``-th percentile (``0 <= q <= 100``); ``None`` when empty.

        Interpolates linearly inside the bucket holding the rank (as Prometheus'
        ``histogram_quantile`` does) and clamps to the observed minimum and maximum.
        """
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be within 0..100, got {q!r}")
        if self._count == 0:
            return None
        rank = q / 100 * self._count
        below = 0
        for i, n in enumerate(self._counts):
            if n and below + n >= rank:
                lower = self._bounds[i - 1] if i > 0 else 0.0
                upper = self._bounds[i] if i < len(self._bounds) else self._max
                estimate = lower + (upper - lower) * (rank - below) / n
                return min(max(estimate, self._min), self._max)
            below += n
        return self._max  # unreachable: the buckets sum to count

    def __repr__(self) -> str:
        return f"<Histogram [count: {self._count}, sum: {self._sum:.6g}]>"


def prometheus_buckets(h: Histogram) -> list[tuple[str, float]]:
    """The exported buckets of ``h`` (every 4th bound, then ``+Inf``), as Prometheus labels."""
    return [
        ("+Inf" if math.isinf(bound) else repr(bound), float(n))
        for bound, n in h.cumulative_buckets(_EXPORT_STRIDE)
    ]

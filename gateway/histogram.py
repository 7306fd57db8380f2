"""
A histogram with fixed buckets, as plain data: what the data path records
(one L{Histogram.observe} per session end or per backend connection, a
bisection and two additions) and what C{/metrics} renders at scrape time
(L{gateway.ops.metrics}).  No C{prometheus_client} object is touched on the
data path, and a worker process sends its histograms to the acceptor as
plain lists (L{Histogram.state}), which adds them up (L{merge_state}).

The bucket bounds are module constants, the same in every process, so
that states can be added without carrying their bounds.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

__all__ = [
    "CONNECT_TIME_BOUNDS",
    "SESSION_DURATION_BOUNDS",
    "Histogram",
    "empty_state",
    "merge_state",
]

SESSION_DURATION_BOUNDS = (
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
)
"""Upper bounds of the session duration buckets, in seconds (a second to a
day: game sessions last minutes to hours)."""

CONNECT_TIME_BOUNDS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds of the backend connect time buckets, in seconds (a LAN
connection to the longest sensible C{--connect-timeout})."""


class Histogram:
    """
    Counts of observed values by bucket, and their sum.

    @ivar bounds: the buckets' upper bounds, ascending (a last bucket,
        C{+Inf}, holds what is above them).
    @ivar counts: the observations in each bucket (not cumulative), one more
        than C{bounds}.
    @ivar sum: the sum of the observed values.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """
        Record one value (a bucket holds the values up to and including its
        bound, as Prometheus's C{le} says).
        """
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def state(self) -> dict[str, Any]:
        """
        The counts and sum as plain data (for the status document, and for a
        worker's reply to its acceptor).
        """
        return {"counts": list(self.counts), "sum": self.sum}


def empty_state(bounds: Sequence[float]) -> dict[str, Any]:
    """
    The state of a histogram with nothing observed.
    """
    return Histogram(bounds).state()


def merge_state(into: dict[str, Any], other: dict[str, Any]) -> None:
    """
    Add the state C{other} to C{into} (both of histograms with the same
    bounds).

    @raise ValueError: their bucket counts differ (different bounds: a
        worker of another version).
    """
    counts, theirs = into["counts"], other["counts"]
    if len(counts) != len(theirs):
        raise ValueError("histograms with different buckets")
    for index, count in enumerate(theirs):
        counts[index] += count
    into["sum"] += other["sum"]

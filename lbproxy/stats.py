"""Plain counters and histograms updated on the hot path and read at scrape time.

prometheus-client's own metric objects take a lock and a label lookup per increment; these are
plain attribute and dict updates, exported by a custom collector in ``lbproxy.admin.metrics``.
"""

from __future__ import annotations

from bisect import bisect_left

DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class Histogram:
    """Cumulative-at-export histogram: ``counts[i]`` counts observations in bucket i only."""

    __slots__ = ("buckets", "counts", "total", "count")

    def __init__(self, buckets: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, cumulative_count), ...]`` ending with ``("+Inf", count)``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class RequestTally:
    """An http listener's finished exchanges: how many by (route, pool, backend, status), and
    their durations by pool. Updated once per exchange by the session, and compiled with it:
    as an interpreted ``HttpListener`` method this cost 0.13 us more per request
    (``benchmarks/metrics_cost.py``, compiled build: 0.78 -> 0.65 us for all the per-request
    counters). Read at scrape time by ``lbproxy.admin.metrics`` and the dashboard."""

    __slots__ = ("counts", "durations")

    def __init__(self) -> None:
        # (route, pool, backend, status) -> count; ("", "", "", status) for unrouted answers.
        self.counts: dict[tuple[str, str, str, int], int] = {}
        self.durations: dict[str, Histogram] = {}

    def routed(self, route: str, pool: str, backend: str, status: int, duration: float) -> None:
        """Count an exchange sent to ``pool`` by ``route`` (``backend`` "" when none was picked)."""
        key = (route, pool, backend, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        histogram = self.durations.get(pool)
        if histogram is None:
            histogram = self.durations[pool] = Histogram()
        histogram.observe(duration)

    def unrouted(self, status: int) -> None:
        """Count an answer given before any route matched (a 400, a 404, a redirect...)."""
        key = ("", "", "", status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def total(self) -> int:
        return sum(self.counts.values())

"""Unit tests of the hot-path counters in lbproxy.stats (pure logic, no sockets)."""

from __future__ import annotations

from lbproxy.stats import Histogram, RequestTally


def test_histogram_counts_each_observation_in_its_bucket_and_exports_cumulative() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert abs(histogram.total - 2.65) < 1e-9


def test_request_tally_counts_routed_exchanges_by_route_pool_backend_and_status() -> None:
    tally = RequestTally()
    tally.routed("api", "payments", "10.0.0.1:80", 200, 0.002)
    tally.routed("api", "payments", "10.0.0.1:80", 200, 0.004)
    tally.routed("api", "payments", "", 503, 0.0001)
    assert tally.counts == {("api", "payments", "10.0.0.1:80", 200): 2, ("api", "payments", "", 503): 1}
    durations = tally.durations["payments"]
    assert durations.count == 3 and abs(durations.total - 0.0061) < 1e-9
    assert tally.total() == 3


def test_request_tally_counts_unrouted_answers_without_a_duration_histogram() -> None:
    tally = RequestTally()
    tally.unrouted(404)
    tally.unrouted(404)
    tally.unrouted(400)
    assert tally.counts == {("", "", "", 404): 2, ("", "", "", 400): 1}
    assert tally.durations == {}
    assert tally.total() == 3

"""Per-client limits as pure logic: token buckets and connection counts."""

from __future__ import annotations

from lbproxy.ratelimit import ClientConnections, TokenBuckets


def test_token_bucket_burst_then_rate() -> None:
    buckets = TokenBuckets(rate=10, burst=5)
    allowed = [buckets.allow("a", 0.0) == 0.0 for _ in range(8)]
    assert allowed == [True] * 5 + [False] * 3
    wait = buckets.allow("a", 0.0)
    assert 0.09 <= wait <= 0.11
    assert buckets.retry_after_header(wait) == b"1"
    assert buckets.allow("a", 0.1) == 0.0, "one token back after 1/rate seconds"
    assert buckets.allow("b", 0.1) == 0.0, "clients are independent"
    assert buckets.limited_total == 4


def test_token_bucket_memory_is_bounded() -> None:
    buckets = TokenBuckets(rate=1, burst=1, max_clients=100)
    for i in range(1000):
        buckets.allow(f"10.0.{i // 256}.{i % 256}", float(i))
    assert len(buckets.buckets) <= 100


def test_client_connection_cap() -> None:
    conns = ClientConnections(limit=2)
    assert conns.claim("a") and conns.claim("a") and not conns.claim("a")
    assert conns.claim("b")
    conns.release("a")
    assert conns.claim("a")
    conns.release("a")
    conns.release("a")
    conns.release("b")
    assert conns.counts == {} and conns.refused_total == 1

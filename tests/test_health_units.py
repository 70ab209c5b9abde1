"""Pure logic of health: rise/fall hysteresis, passive ejection, slow start."""

from __future__ import annotations

import asyncio

import pytest

from lbproxy.config.model import Address, BackendConfig, HealthCheckConfig, OutlierConfig, PoolConfig
from lbproxy.health.checker import PoolHealth
from lbproxy.health.hysteresis import Hysteresis
from lbproxy.pool.backend import BackendState
from lbproxy.pool.pool import Pool


def test_first_result_decides_at_once() -> None:
    h = Hysteresis(rise=2, fall=3)
    assert h.up and h.changing
    assert h.record(False) is False
    assert not h.up and not h.changing
    h2 = Hysteresis(rise=2, fall=3)
    assert h2.record(True) is None and h2.up


def test_fall_and_rise_are_consecutive() -> None:
    h = Hysteresis(rise=2, fall=3)
    h.record(True)
    assert h.record(False) is None
    assert h.changing
    assert h.record(False) is None
    assert h.record(False) is False and not h.up
    assert h.record(True) is None
    assert h.record(False) is None  # resets the rise count
    assert h.record(True) is None
    assert h.record(True) is True and h.up


def test_alternating_results_never_flap() -> None:
    h = Hysteresis(rise=2, fall=3)
    h.record(True)
    for i in range(100):
        assert h.record(i % 2 == 0) is None
    assert h.up


def make_pool(n: int, outlier: OutlierConfig | None = OutlierConfig(), slow_start: float = 0.0) -> Pool:
    backends = tuple(BackendConfig(Address(f"10.0.0.{i}", 80)) for i in range(1, n + 1))
    return Pool(
        PoolConfig(
            name="web",
            backends=backends,
            outlier_detection=outlier,
            slow_start=slow_start,
            health_check=HealthCheckConfig(),
        )
    )


async def test_consecutive_failures_eject_with_growing_time_and_a_cap() -> None:
    pool = make_pool(10, OutlierConfig(consecutive_failures=3, base_ejection_time=0.2, max_ejection_percent=20))
    health = PoolHealth(pool, asyncio.get_running_loop())
    a, b, c = pool.backends[:3]
    for _ in range(2):
        a.note_failure()
    assert not a.ejected
    a.note_success()
    for _ in range(2):
        a.note_failure()
    assert not a.ejected, "a success in between resets the count"
    a.note_failure()
    assert a.ejected and a.state is BackendState.EJECTED and not a.available
    for _ in range(3):
        b.note_failure()
    assert b.ejected
    for _ in range(3):
        c.note_failure()
    assert not c.ejected, "20% of 10 backends: at most two ejected at once"
    assert health.ejections_overflow == 1
    await asyncio.sleep(0.3)
    assert not a.ejected and a.available, "ejection time over"
    for _ in range(3):
        a.note_failure()
    assert a.ejected
    assert health.records[a].ejected_until - asyncio.get_running_loop().time() > 0.3, "second ejection: 2 x base"
    health.record_check(a, True, "status 200")
    assert not a.ejected, "a passing active check brings it back early"


async def test_at_least_one_backend_may_be_ejected() -> None:
    pool = make_pool(2, OutlierConfig(consecutive_failures=1, max_ejection_percent=10))
    PoolHealth(pool, asyncio.get_running_loop())
    pool.backends[0].note_failure()
    assert pool.backends[0].ejected
    pool.backends[1].note_failure()
    assert not pool.backends[1].ejected


async def test_consecutive_5xx_ejects_only_when_enabled() -> None:
    pool = make_pool(2, OutlierConfig(consecutive_5xx=0))
    PoolHealth(pool, asyncio.get_running_loop())
    for _ in range(10):
        pool.backends[0].note_status(503)
    assert not pool.backends[0].ejected
    pool = make_pool(2, OutlierConfig(consecutive_5xx=3))
    PoolHealth(pool, asyncio.get_running_loop())
    b = pool.backends[0]
    b.note_status(500)
    b.note_status(502)
    b.note_status(200)
    b.note_status(500)
    b.note_status(500)
    assert not b.ejected
    b.note_status(504)
    assert b.ejected


async def test_slow_start_ramps_weight_after_coming_back() -> None:
    pool = make_pool(2, slow_start=0.4)
    health = PoolHealth(pool, asyncio.get_running_loop())
    b = pool.backends[0]
    b.base_weight = b.weight = 10
    health.record_check(b, True, "ok")  # first check confirms: no ramp at start
    assert b.weight == 10
    for _ in range(3):
        health.record_check(b, False, "refused")
    assert b.state is BackendState.UNHEALTHY
    health.record_check(b, True, "ok")
    health.record_check(b, True, "ok")
    assert b.state is BackendState.HEALTHY
    assert b.weight == pytest.approx(1.0)  # 10% floor
    await asyncio.sleep(0.2)
    assert 3 <= b.weight <= 8
    await asyncio.sleep(0.3)
    assert b.weight == 10


def test_admin_states_take_precedence() -> None:
    pool = make_pool(1)
    b = pool.backends[0]
    b.set_checked_up(False, "test")
    b.set_admin("draining", "test")
    assert b.state is BackendState.DRAINING
    b.set_admin("ready", "test")
    assert b.state is BackendState.UNHEALTHY
    b.set_checked_up(True, "test")
    assert b.state is BackendState.HEALTHY and b.available
    assert b.transitions == {"unhealthy": 2, "draining": 1, "healthy": 1}

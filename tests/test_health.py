"""Health with real backends that the tests stop and start: checks, ejection, drain, admin API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import pytest

from tests.client import Connection, fetch
from tests.restartable import RestartableBackend  # noqa: F401 - type of the fixture's items


def health_config(backends: list[RestartableBackend], check: str, extra_pool: str = "", admin: str = "") -> str:
    lines = "\n".join(f"              - {b.address}" for b in backends)
    return f"""
        {admin}
        pools:
          web:
            backends:
{lines}
            health_check: {check}
            {extra_pool}
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """


async def wait_for(predicate, timeout: float, step: float = 0.02) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(step)
    return time.monotonic() - start


async def test_dead_backend_marked_down_in_bounded_time_and_back_after_rise(make_daemon, caplog, restartable) -> None:
    caplog.set_level(logging.INFO, logger="lbproxy")
    backends = await restartable(3)
    interval, timeout, fall, rise = 0.2, 0.2, 3, 2
    daemon = await make_daemon(
        health_config(
            backends,
            f"{{type: http, path: /health, interval: {interval}, timeout: {timeout}, "
            f"unhealthy_threshold: {fall}, healthy_threshold: {rise}}}",
        )
    )
    host, port = daemon.listener_address("public")
    pool = daemon.pools["web"]
    victim = pool.backends[1]
    await wait_for(lambda: daemon.health.pools["web"].records[victim].checks_passed >= 1, 5)

    await backends[1].stop()
    took = await wait_for(lambda: not victim.available, 5)
    bound = fall * interval * 1.15 + timeout + 0.3  # jitter and scheduling slack
    assert took <= bound, f"marked down after {took:.2f}s, bound {bound:.2f}s"
    assert any(
        f"pool web backend {victim.label} DOWN after 3 failed checks: connection refused" in r.getMessage()
        for r in caplog.records
    )
    seen = Counter()
    for _ in range(12):
        r = await fetch(host, port)
        assert r.status == 200
        seen[r.json()["backend"]] += 1
    assert seen == {"b1": 6, "b3": 6}, "nothing goes to the backend known to be down"

    await backends[1].start()
    took = await wait_for(lambda: victim.available, 5)
    assert took <= rise * interval * 1.15 + 0.5
    assert any(f"pool web backend {victim.label} UP after 2 passed checks" in r.getMessage() for r in caplog.records)
    seen = Counter([(await fetch(host, port)).json()["backend"] for _ in range(6)])
    assert seen == {"b1": 2, "b2": 2, "b3": 2}


async def test_flapping_backend_does_not_flap(make_daemon, restartable) -> None:
    """A health endpoint that alternates good and bad answers keeps its state (hysteresis)."""
    backends = await restartable(2)
    daemon = await make_daemon(
        health_config(backends, "{type: http, interval: 0.05, timeout: 0.2, expect_status: 200}")
    )
    victim = daemon.pools["web"].backends[0]
    record = daemon.health.pools["web"].records[victim]
    await wait_for(lambda: record.checks_passed >= 1, 5)
    flip = {"n": 0}

    original = backends[0]._make

    def alternating() -> asyncio.Protocol:
        flip["n"] += 1
        backends[0].status_override = 500 if flip["n"] % 2 else None
        return original()

    backends[0]._make = alternating  # type: ignore[method-assign]
    backends[0].server.close()  # type: ignore[union-attr]
    backends[0].server = await asyncio.get_running_loop().create_server(alternating, "127.0.0.1", backends[0].port)
    await wait_for(lambda: record.checks_failed >= 6, 10)
    assert victim.transitions == {}, "no state change while results alternate"
    assert victim.available


async def test_stopping_one_of_three_under_load_fails_no_idempotent_request(make_daemon, restartable) -> None:
    backends = await restartable(3)
    daemon = await make_daemon(health_config(backends, "{interval: 0.2, timeout: 0.2}"))
    host, port = daemon.listener_address("public")
    failures = 0
    total = 0
    stop_at = 150

    async def client() -> None:
        nonlocal failures, total
        conn = await Connection.open(host, port)
        try:
            while total < 600:
                total += 1
                if total == stop_at:
                    asyncio.get_running_loop().create_task(backends[2].stop())
                try:
                    r = await conn.request(path="/load")
                except (ConnectionError, OSError):
                    failures += 1
                    await conn.close()
                    conn = await Connection.open(host, port)
                    continue
                if r.status != 200:
                    failures += 1
        finally:
            await conn.close()

    async with asyncio.timeout(60):
        await asyncio.gather(*(client() for _ in range(8)))
    assert failures == 0, f"{failures} of {total} requests failed"
    assert daemon.pools["web"].backends[2].available is False


async def test_all_down_gives_503_with_retry_after(make_daemon, restartable) -> None:
    backends = await restartable(1)
    daemon = await make_daemon(health_config(backends, "{interval: 0.1, timeout: 0.2}"))
    host, port = daemon.listener_address("public")
    await backends[0].stop()
    await wait_for(lambda: not daemon.pools["web"].backends[0].available, 5)
    r = await fetch(host, port)
    assert r.status == 503 and r.header("Retry-After") == "1"
    assert b"no available backend" in r.body
    assert daemon.pools["web"].no_backend_total >= 1


async def test_drain_lets_inflight_finish_and_sends_new_work_elsewhere(make_daemon, servers, restartable) -> None:
    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            asyncio.get_running_loop().call_later(
                0.5, self.transport.write, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
            )

    slow = await servers(Slow)
    fast = await restartable(1)
    slow_addr = f"127.0.0.1:{slow.sockets[0].getsockname()[1]}"
    daemon = await make_daemon(
        f"""
        admin:
          bind: 127.0.0.1:0
          token: s3cret
        pools:
          web:
            strategy: least_connections
            backends: ["{slow_addr}", "{fast[0].address}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """
    )
    host, port = daemon.listener_address("public")
    assert daemon.admin is not None
    admin = daemon.admin.address
    # put one request in flight on the slow backend
    conn = await Connection.open(host, port)
    await conn.send(b"GET /inflight HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(lambda: daemon.pools["web"].by_label[slow_addr].active == 1, 5)

    path = f"/pools/web/backends/{slow_addr}/drain"
    assert (await fetch(admin.host, admin.port, "POST", path, body=b"")).status == 401
    assert (await fetch(admin.host, admin.port, "GET", path)).status == 405
    r = await fetch(admin.host, admin.port, "POST", path, body=b"", headers={"Authorization": "Bearer s3cret"})
    assert r.status == 200 and r.json()["state"] == "draining"

    for _ in range(5):
        r = await fetch(host, port, path="/new")
        assert r.json()["backend"] == "b1", "new requests avoid the draining backend"
    r = await conn.read_response()
    assert r.status == 200 and r.body == b"slow", "the in-flight request completed"
    await conn.close()

    auth = {"Authorization": "Bearer s3cret"}
    r = await fetch(admin.host, admin.port, "POST", f"/pools/web/backends/{slow_addr}/enable", body=b"", headers=auth)
    assert r.json()["state"] == "healthy"
    r = await fetch(admin.host, admin.port, "POST", f"/pools/web/backends/{fast[0].address}/weight?weight=7",
                    body=b"", headers=auth)  # fmt: skip
    assert r.status == 200 and r.json()["weight"] == 7
    assert daemon.pools["web"].by_label[fast[0].address].weight == 7
    r = await fetch(admin.host, admin.port, "POST", f"/pools/web/backends/{fast[0].address}/weight",
                    body=b'{"weight": 0}', headers=auth)  # fmt: skip
    assert r.status == 400
    r = await fetch(admin.host, admin.port, "POST", f"/pools/web/backends/{fast[0].address}/disable", body=b"", headers=auth)
    assert r.json()["state"] == "disabled"
    r = await fetch(admin.host, admin.port, "POST", "/pools/web/backends/10.9.9.9:1/drain", body=b"", headers=auth)
    assert r.status == 404


async def test_tcp_drain_keeps_open_connections(make_daemon, tcp_backends) -> None:
    ports = await tcp_backends(2)
    daemon = await make_daemon(
        f"""
        pools:
          echo:
            backends: ["127.0.0.1:{ports[0]}", "127.0.0.1:{ports[1]}"]
        listeners:
          - name: raw
            bind: 127.0.0.1:0
            mode: tcp
            pool: echo
        """
    )
    host, port = daemon.listener_address("raw")
    reader, writer = await asyncio.open_connection(host, port)
    async with asyncio.timeout(5):
        first = await reader.readline()
    assert first == b"hello from t1\n"
    daemon.pools["echo"].backends[0].set_admin("draining", "test")
    for _ in range(3):
        r2, w2 = await asyncio.open_connection(host, port)
        async with asyncio.timeout(5):
            assert await r2.readline() == b"hello from t2\n"
        w2.close()
    writer.write(b"still here\n")
    async with asyncio.timeout(5):
        assert await reader.readline() == b"still here\n", "the open connection to the draining backend works"
    writer.close()


async def test_tcp_check_passes_through_health_status_and_metrics(make_daemon, restartable) -> None:
    backends = await restartable(2)
    daemon = await make_daemon(
        health_config(backends, "{interval: 0.1, timeout: 0.2}", admin="admin: {bind: '127.0.0.1:0'}")
    )
    await backends[0].stop()
    victim = daemon.pools["web"].backends[0]
    await wait_for(lambda: not victim.available, 5)
    assert daemon.admin is not None
    admin = daemon.admin.address
    status = (await fetch(admin.host, admin.port, path="/status")).json()
    views = {b["address"]: b for b in status["pools"][0]["backends"]}
    assert views[victim.label]["state"] == "unhealthy"
    assert views[victim.label]["last_check"]["result"] == "failed"
    assert views[victim.label]["last_check"]["detail"] in ("connection refused", "connection reset by peer")
    metrics = (await fetch(admin.host, admin.port, path="/metrics")).body.decode()
    assert f'lbproxy_backend_up{{backend="{victim.label}",pool="web"}} 0.0' in metrics
    assert f'lbproxy_health_checks_total{{backend="{victim.label}",pool="web",result="failed"}}' in metrics
    assert f'lbproxy_backend_transitions_total{{backend="{victim.label}",pool="web",to="unhealthy"}} 1.0' in metrics


@pytest.mark.parametrize("kind", ["http"])
async def test_http_check_expectations(make_daemon, kind: str, restartable) -> None:
    backends = await restartable(2)
    daemon = await make_daemon(
        health_config(backends, '{type: http, interval: 0.1, timeout: 0.3, expect_status: "200-299", expect_body: "backend"}')
    )
    victim = daemon.pools["web"].backends[0]
    record = daemon.health.pools["web"].records[victim]
    await wait_for(lambda: record.checks_passed >= 1, 5)
    backends[0].status_override = 302
    await wait_for(lambda: not victim.available, 5)
    assert record.last_detail == "status 302"
    backends[0].status_override = None
    await wait_for(lambda: victim.available, 5)


async def test_checks_run_once_per_pool_whatever_the_listeners(make_daemon, servers) -> None:
    """Three listeners share one pool: its backend sees one check per interval, not three."""
    accepted = []

    class Counting(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted.append(asyncio.get_running_loop().time())
            transport.close()

    server = await servers(Counting)
    port = server.sockets[0].getsockname()[1]
    interval = 0.1
    listeners = "\n".join(
        f"          - {{name: l{i}, bind: 127.0.0.1:0, routes: [{{pool: web}}]}}" for i in range(3)
    )
    await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{port}"]
            health_check: {{interval: {interval}, timeout: 0.5}}
        listeners:
{listeners}
        """
    )
    await asyncio.sleep(1.05)
    # one immediate check, then one per interval with +-15% jitter: about 10 in 1 s, never 30
    assert 6 <= len(accepted) <= 14, len(accepted)


async def test_consecutive_5xx_eject_a_backend_on_real_traffic(make_daemon, restartable) -> None:
    backends = await restartable(2)
    backends[0].status_override = 503
    daemon = await make_daemon(
        health_config(backends, "false", extra_pool="outlier_detection: {consecutive_5xx: 3, max_ejection_percent: 50}")
    )
    host, port = daemon.listener_address("public")
    statuses = [(await fetch(host, port)).status for _ in range(8)]
    assert statuses[:6].count(503) == 3, statuses
    assert daemon.pools["web"].backends[0].ejected
    assert statuses[6:] == [200, 200], "after ejection every request goes to the healthy backend"

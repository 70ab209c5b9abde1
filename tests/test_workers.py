"""``workers: N``: a supervisor and worker processes sharing the listeners (real processes).

Each test starts ``python -m lbproxy run --workers 2`` on loopback with real backends, and stops
it (SIGTERM, bounded). Worker PIDs come from /status; a test kills one only after checking it is
a child of the supervisor it started.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbproxy.config.loader import load_config_text
from lbproxy.errors import ConfigError
from lbproxy.runtime.supervisor import resolve_workers
from tests.client import Connection, fetch
from tests.test_accept_sockets import listeners_on, socket_inodes
from tests.conftest import ROOT
from tests.lbproxy_process import LbProcess

Start = Callable[..., Awaitable[LbProcess]]


def config_text(backends: list[int], extra_pool: str = "", extra: str = "") -> str:
    items = ", ".join(f"'127.0.0.1:{p}'" for p in backends)
    return (
        "admin: {bind: '127.0.0.1:0'}\n"
        f"pools:\n  web:\n    backends: [{items}]\n{extra_pool}"
        "listeners:\n  - {name: public, bind: '127.0.0.1:0', routes: [{pool: web}]}\n"
        "drain_timeout: 10s\n" + extra
    )


@pytest.fixture
async def lbproxy(tmp_path: Path) -> AsyncIterator[Start]:
    """``await lbproxy(config_text, *args)``: a running lbproxy process, stopped at the end.

    With ``LBPROXY_TEST_LOGS=FILE`` set, every process's stderr is appended to FILE (debugging).
    """
    started: list[LbProcess] = []

    async def factory(text: str, *args: str) -> LbProcess:
        path = tmp_path / f"lb{len(started)}.yaml"
        path.write_text(text)
        process = await LbProcess.start(path, *args)
        started.append(process)
        return process

    yield factory
    for process in started:
        await process.stop()
        if os.environ.get("LBPROXY_TEST_LOGS"):
            with open(os.environ["LBPROXY_TEST_LOGS"], "a") as f:
                f.write("".join(process.lines) + "-" * 40 + "\n")


def child_of(pid: int, parent: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1]) == parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def backends_of(host: str, port: int, count: int) -> Counter[str]:
    """Which backend answered each of ``count`` requests sent at once on fresh connections."""
    responses = await asyncio.gather(*(fetch(host, port) for _ in range(count)))
    assert all(r.status == 200 for r in responses)
    return Counter(r.json()["backend"] for r in responses)


def metric_sum(text: str, family: str, sample: str, **labels: str) -> float:
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            return sum(
                s.value for s in metric.samples
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
            )  # fmt: skip
    return 0.0


@pytest.mark.parametrize("sharing", ["reuseport", "shared"])
async def test_two_workers_both_serve_requests(lbproxy: Start, http_backends, sharing: str) -> None:
    web = await http_backends(1)
    lb = await lbproxy(config_text(web), "--workers", "2", *(["--shared-socket"] if sharing == "shared" else []))
    status = await lb.status()
    pids = [w["pid"] for w in status["workers"]]
    assert len(set(pids)) == 2 and all(child_of(pid, lb.proc.pid) for pid in pids)
    assert [w["state"] for w in status["workers"]] == ["running", "running"]
    assert status["supervisor"] == {"pid": lb.proc.pid, "socket_sharing": sharing}

    assert (await backends_of(*lb.address(), 40)) == {"b1": 40}
    answered = await lb.requests_from_every_worker()
    assert set(answered) == {"b1"}
    served = await lb.served()
    assert sum(served) == 40 + sum(answered.values()) and all(n > 0 for n in served), served


@pytest.mark.parametrize("sharing", ["reuseport", "shared"])
async def test_workers_accept_from_accept_sockets_each(lbproxy: Start, http_backends, sharing: str) -> None:
    web = await http_backends(1)
    text = config_text(web).replace("routes: [{pool: web}]}", "routes: [{pool: web}], accept_sockets: 3}")
    lb = await lbproxy(text, "--workers", "2", *(["--shared-socket"] if sharing == "shared" else []))
    port = lb.address()[1]
    listening = set(listeners_on(port))
    pids = [w["pid"] for w in (await lb.status())["workers"]]
    held = [socket_inodes(pid) & listening for pid in pids]
    if sharing == "reuseport":
        # 3 sockets of its own per worker, 6 on the address: none is shared between workers
        assert len(listening) == 6 and [len(h) for h in held] == [3, 3] and not held[0] & held[1]
    else:
        assert len(listening) == 3 and held == [listening, listening]
    assert socket_inodes(lb.proc.pid) >= listening, "the supervisor keeps its copies (restarts)"
    async with asyncio.timeout(20):
        for _ in range(3):
            answers = await asyncio.gather(*(fetch(*lb.address()) for _ in range(20)))
            assert all(answer.status == 200 for answer in answers)
    assert set(await lb.requests_from_every_worker()) == {"b1"}

    lb.config.write_text(text.replace("accept_sockets: 3", "accept_sockets: 2"))
    reply = (await lb.post("/reload")).json()
    assert reply["applied"] is True
    assert "listener public: accept_sockets changed to 2: needs a restart (or a new bind)" in reply["messages"], reply
    assert set(listeners_on(port)) == listening, "a reload keeps the listener's sockets"


async def test_metrics_totals_are_summed_over_workers(lbproxy: Start, http_backends) -> None:
    web = await http_backends(2)
    lb = await lbproxy(config_text(web), "--workers", "2")
    await backends_of(*lb.address(), 30)
    conn = await Connection.open(*lb.address())
    for _ in range(7):
        assert (await conn.request()).status == 200
    text = (await lb.get("/metrics")).body.decode()
    assert metric_sum(text, "lbproxy_requests", "lbproxy_requests_total", code="200") == 37
    assert metric_sum(text, "lbproxy_connections", "lbproxy_connections_total") == 31
    assert metric_sum(text, "lbproxy_connections_active", "lbproxy_connections_active") == 1
    assert metric_sum(text, "lbproxy_request_duration_seconds", "lbproxy_request_duration_seconds_count") == 37
    assert metric_sum(text, "lbproxy_workers", "lbproxy_workers") == 2
    await conn.close()
    status = await lb.status()
    assert status["listeners"][0]["requests_total"] == 37
    assert sum(b["connections_total"] for b in status["pools"][0]["backends"]) == 37


@pytest.mark.parametrize("sharing", ["reuseport", "shared"])
async def test_killed_worker_is_restarted_and_service_continues(lbproxy: Start, http_backends, sharing: str) -> None:
    web = await http_backends(1)
    lb = await lbproxy(config_text(web), "--workers", "2", *(["--shared-socket"] if sharing == "shared" else []))
    await lb.requests_from_every_worker()
    counted = metric_sum((await lb.get("/metrics")).body.decode(), "lbproxy_requests", "lbproxy_requests_total")
    victim = (await lb.status())["workers"][0]["pid"]
    assert child_of(victim, lb.proc.pid)
    os.kill(victim, signal.SIGKILL)
    for _ in range(10):  # the other worker keeps serving while this one is down
        assert (await fetch(*lb.address())).status == 200
    line = await lb.wait_line("restarting it in", timeout=10)
    assert f"worker 0 (pid {victim}) was killed by SIGKILL" in line
    async with asyncio.timeout(15):
        while True:
            workers = (await lb.status())["workers"]
            if workers[0]["state"] == "running" and workers[0]["pid"] != victim:
                break
            await asyncio.sleep(0.1)
    assert workers[0]["restarts"] == 1 and child_of(workers[0]["pid"], lb.proc.pid)
    assert not alive(victim) or not child_of(victim, lb.proc.pid)
    assert set(await lb.requests_from_every_worker()) == {"b1"}
    text = (await lb.get("/metrics")).body.decode()
    assert metric_sum(text, "lbproxy_worker_restarts", "lbproxy_worker_restarts_total") == 1
    after = metric_sum(text, "lbproxy_requests", "lbproxy_requests_total")
    assert after >= counted + 10, "counters seen from the dead worker are kept: totals never go down"


async def test_a_worker_that_keeps_dying_does_not_hold_connections(lbproxy: Start, http_backends) -> None:
    web = await http_backends(1)
    lb = await lbproxy(config_text(web), "--workers", "2")
    first = (await lb.status())["workers"][0]["pid"]
    os.kill(first, signal.SIGKILL)
    async with asyncio.timeout(15):
        while (worker := (await lb.status())["workers"][0])["state"] != "running" or worker["pid"] == first:
            await asyncio.sleep(0.05)
    assert child_of(worker["pid"], lb.proc.pid)
    mark = len(lb.lines)
    os.kill(worker["pid"], signal.SIGKILL)  # again, soon after: a crash loop
    # its 4 sockets (the default accept_sockets) on the one listener
    await lb.wait_line("worker 0 keeps failing: its 4 sockets are closed", after=mark)
    assert len(listeners_on(lb.address()[1])) == 4, "only worker 1's sockets are left listening"
    for _ in range(20):  # none of them waits for worker 0 to come back
        started = time.monotonic()
        assert (await fetch(*lb.address())).status == 200
        assert time.monotonic() - started < 0.5
    await lb.wait_line("worker 0 (pid", after=len(lb.lines))
    assert set(await lb.requests_from_every_worker()) == {"b1"}, "a new socket for worker 0 when it is back"


async def test_sighup_and_post_reload_apply_to_every_worker(lbproxy: Start, http_backends) -> None:
    web = await http_backends(3)
    lb = await lbproxy(config_text(web[:1]), "--workers", "2")
    path = lb.config
    assert (await backends_of(*lb.address(), 10)) == {"b1": 10}

    path.write_text(config_text(web[1:2]))
    mark = len(lb.lines)
    lb.proc.send_signal(signal.SIGHUP)
    await lb.wait_line("lbproxy.supervisor: configuration reloaded", after=mark)
    assert "(2 of 2 workers applied it)" in lb.lines[-1] or any("2 of 2 workers" in l for l in lb.lines[mark:])
    assert (await backends_of(*lb.address(), 30)) == {"b2": 30}
    assert set(await lb.requests_from_every_worker()) == {"b2"}
    assert [w["reloads"]["success"] for w in (await lb.status())["workers"]] == [1, 1]

    path.write_text(config_text(web[1:2]) + "bogus_key: 1\n")
    checked = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "lbproxy", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
    )  # fmt: skip
    problems = [l for l in checked.stderr.splitlines() if re.match(rf"{re.escape(str(path))}:\d+: ", l)]
    assert problems
    mark = len(lb.lines)
    lb.proc.send_signal(signal.SIGHUP)
    await lb.wait_line("the running configuration is kept", after=mark)
    refused = "".join(lb.lines[mark:])
    assert all(f"reload refused: {p}" in refused for p in problems), (problems, refused)
    assert (await backends_of(*lb.address(), 10)) == {"b2": 10}

    path.write_text(config_text(web[2:]))
    r = await lb.post("/reload")
    assert r.status == 200 and r.json()["applied"] is True
    assert set(await lb.requests_from_every_worker()) == {"b3"}
    assert [w["reloads"]["success"] for w in (await lb.status())["workers"]] == [2, 2]
    text = (await lb.get("/metrics")).body.decode()
    assert metric_sum(text, "lbproxy_config_reloads", "lbproxy_config_reloads_total", result="success") == 2
    assert metric_sum(text, "lbproxy_config_reloads", "lbproxy_config_reloads_total", result="failure") == 1


async def test_sigterm_drains_every_worker_and_exits_zero(lbproxy: Start, servers) -> None:
    class SlowBackend(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                asyncio.get_running_loop().call_later(
                    0.8, self.transport.write, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
                )

    server = await servers(SlowBackend)
    lb = await lbproxy(config_text([server.sockets[0].getsockname()[1]]), "--workers", "2")
    pids = [w["pid"] for w in (await lb.status())["workers"]]
    conns = [await Connection.open(*lb.address()) for _ in range(8)]  # spread over both workers
    for conn in conns:
        await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.3)
    assert sum(w["connections_active"] for w in (await lb.status())["workers"]) == 8
    started = time.monotonic()
    lb.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.1)
    assert (await lb.get("/readyz")).status == 503
    for conn in conns:
        response = await conn.read_response()
        assert response.status == 200 and response.body == b"slow"
        assert response.header("Connection") == "close"
        await conn.close()
    assert await lb.stop(timeout=20) == 0
    assert time.monotonic() - started < 10
    assert not any(alive(pid) for pid in pids)
    assert "shutdown complete" in lb.lines[-1]
    with pytest.raises(OSError):
        await fetch(*lb.address())


async def test_reload_adds_and_removes_listeners_in_every_worker(lbproxy: Start, http_backends) -> None:
    web = await http_backends(1)
    lb = await lbproxy(config_text(web), "--workers", "2")
    first = lb.address()
    two = config_text(web).replace(
        "listeners:\n", "listeners:\n  - {name: second, bind: '127.0.0.1:0', mode: tcp, pool: web}\n"
    )
    lb.config.write_text(two)
    mark = len(lb.lines)
    assert (await lb.post("/reload")).json()["applied"] is True
    await lb.wait_line("listener second (tcp) on", after=mark)
    second = lb.address("second")
    for _ in range(20):  # the new socket reached both workers: whichever accepts, it works
        reader, writer = await asyncio.open_connection(*second)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.read()).startswith(b"HTTP/1.1 200 OK")
        writer.close()
    tcp = [l for l in (await lb.status())["listeners"] if l["name"] == "second"]
    assert tcp and tcp[0]["connections_total"] == 20
    assert [w["reloads"]["success"] for w in (await lb.status())["workers"]] == [1, 1], "both took the socket"

    lb.config.write_text(two.replace("  - {name: public, bind: '127.0.0.1:0', routes: [{pool: web}]}\n", ""))
    assert (await lb.post("/reload")).json()["applied"] is True
    with pytest.raises(OSError):
        await fetch(*first)
    assert [l["name"] for l in (await lb.status())["listeners"]] == ["second"]
    assert [w["reloads"]["success"] for w in (await lb.status())["workers"]] == [2, 2]


async def test_workers_leave_when_the_supervisor_is_killed(lbproxy: Start, http_backends) -> None:
    web = await http_backends(1)
    lb = await lbproxy(config_text(web), "--workers", "2")
    pids = [w["pid"] for w in (await lb.status())["workers"]]
    assert await lb.stop(signal.SIGKILL) == -signal.SIGKILL
    async with asyncio.timeout(15):  # they notice the channel closing, drain and exit
        while any(alive(pid) and not zombie(pid) for pid in pids):
            await asyncio.sleep(0.05)


def zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_drain_action_reaches_every_worker(lbproxy: Start, http_backends) -> None:
    web = await http_backends(2)
    lb = await lbproxy(config_text(web), "--workers", "2")
    assert set(await backends_of(*lb.address(), 20)) == {"b1", "b2"}
    r = await lb.post(f"/pools/web/backends/127.0.0.1:{web[0]}/drain")
    assert r.status == 200
    assert r.json()["state"] == "draining" and r.json()["worker_states"] == ["draining", "draining"]
    assert (await backends_of(*lb.address(), 40)) == {"b2": 40}
    assert set(await lb.requests_from_every_worker()) == {"b2"}, "both workers served, none sent to b1"
    backend = (await lb.status())["pools"][0]["backends"][0]
    assert backend["state"] == "draining" and backend["worker_states"] == ["draining", "draining"]
    assert (await lb.post("/pools/web/backends/127.0.0.1:1/drain")).status == 404
    r = await lb.post(f"/pools/web/backends/127.0.0.1:{web[0]}/enable")
    assert r.json()["worker_states"] == ["healthy", "healthy"]


async def test_health_checks_are_not_multiplied_by_workers(lbproxy: Start, servers) -> None:
    checks: list[float] = []

    class Counting(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if data.startswith(b"GET /hc "):
                checks.append(time.monotonic())
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            self.transport.close()

    server = await servers(Counting)
    interval = 0.1
    pool = f"    health_check: {{type: http, path: /hc, interval: {interval}, timeout: 1}}\n"
    lb = await lbproxy(config_text([server.sockets[0].getsockname()[1]], extra_pool=pool), "--workers", "2")
    await asyncio.sleep(0.3)
    start, seen = time.monotonic(), len(checks)
    await asyncio.sleep(2.0)
    elapsed, count = time.monotonic() - start, len(checks) - seen
    expected = elapsed / interval  # one checker; two would make this twice as many
    assert 0.5 * expected <= count <= 1.4 * expected, (count, expected)
    text = (await lb.get("/metrics")).body.decode()
    reported = metric_sum(text, "lbproxy_health_checks", "lbproxy_health_checks_total", result="passed")
    assert abs(reported - len(checks)) <= 3, (reported, len(checks))


async def test_workers_from_the_config_file_and_the_flag_wins(lbproxy: Start, http_backends) -> None:
    web = await http_backends(1)
    lb = await lbproxy(config_text(web, extra="workers: 2\n"))
    assert len((await lb.status())["workers"]) == 2
    single = await lbproxy(config_text(web, extra="workers: 2\n"), "--workers", "1")
    status = await single.status()
    assert "workers" not in status and status["ready"] is True
    assert re.search(r"lbproxy \S+ \(\w+ build\) running: 1 listeners, 1 pools\n", "".join(single.lines))


def test_workers_config_values() -> None:
    base = "pools: {web: {backends: ['127.0.0.1:1']}}\nlisteners: [{name: p, bind: '127.0.0.1:0', routes: [{pool: web}]}]\n"
    assert load_config_text(base).workers == 1
    assert load_config_text(base + "workers: 3\n").workers == 3
    assert load_config_text(base + "workers: auto\n").workers == "auto"
    assert resolve_workers("auto") == len(os.sched_getaffinity(0)) and resolve_workers(2) == 2
    for value, message in (
        ("0", "workers: must be between 1 and 1024 or 'auto', got 0"),
        ("many", "workers: expected a number of processes or 'auto', got string 'many'"),
        ("true", "workers: expected a number of processes or 'auto', got boolean true"),
    ):
        with pytest.raises(ConfigError) as info:
            load_config_text(base + f"workers: {value}\n", "lb.yaml")
        assert info.value.problems == [f"lb.yaml:3: {message}"]


def test_run_refuses_a_bad_workers_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "lbproxy", "run", "-c", "x.yaml", "--workers", "0"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT, check=False)  # fmt: skip
    assert out.returncode == 2 and "--workers: must be between 1 and 1024" in out.stderr


# -- the pieces, without processes ---------------------------------------------------------------


async def test_control_channel_carries_messages_and_sockets() -> None:
    from lbproxy.runtime.channel import ChannelClosed, ControlChannel

    left, right = socket.socketpair()
    received: list[tuple[dict, list[int]]] = []
    a = ControlChannel(left, lambda m, fds: None, name="a")

    def answer(message: dict, fds: list[int]) -> None:
        received.append((message, fds))
        b.reply(message, {"echo": message.get("payload"), "fds": len(fds)})

    b = ControlChannel(right, answer, name="b")
    listening = socket.create_server(("127.0.0.1", 0))
    try:
        big = "x" * 3_000_000  # larger than the socket buffers: sent in pieces
        async with asyncio.timeout(10):
            reply = await a.request({"op": "take", "payload": big}, 10, fds=[listening.fileno()])
        assert reply["echo"] == big and reply["fds"] == 1
        ((_, fds),) = received
        copy = socket.socket(fileno=fds[0])
        assert copy.getsockname() == listening.getsockname(), "the same listening socket, another descriptor"
        copy.close()
        with pytest.raises(TimeoutError):
            await ControlChannel.request(b, {"op": "nobody answers"}, 0.1)
        b.close()
        with pytest.raises(ChannelClosed):
            async with asyncio.timeout(5):
                await a.request({"op": "after close"}, 5)
        assert a.is_closed
    finally:
        listening.close()
        a.close()
        b.close()


def test_merged_status_and_metrics() -> None:
    from lbproxy.runtime.merge import fold_departed, merge_metrics, merge_status

    def backend(state: str, active: int, conns: int, ejected: bool = False) -> dict:
        return {"address": "10.0.0.1:80", "state": state, "admin": "ready", "checked_up": True, "ejected": ejected,
                "weight": 1, "effective_weight": 1, "active": active, "connections_total": conns,
                "failures_total": 0, "responses_5xx": 0, "errors": {"reset": 1} if conns else {}}  # fmt: skip

    def status(b: dict) -> dict:
        return {"version": "x", "ready": True, "reloads": {"success": 1, "failure": 0},
                "listeners": [{"name": "public", "mode": "http", "bind": "127.0.0.1:1", "connections_active": 2,
                               "connections_total": 5, "requests_total": 7}],
                "pools": [{"name": "web", "no_backend_total": 1, "backends": [b]}]}  # fmt: skip

    view = status(backend("healthy", 0, 0))
    view["listeners"] = []
    view["pools"][0]["backends"][0]["last_check"] = {"result": "passed"}
    view["pools"][0]["no_backend_total"] = 0
    workers = [
        {"index": 0, "pid": 10, "state": "running", "restarts": 0, "status": status(backend("healthy", 1, 3))},
        {"index": 1, "pid": 11, "state": "running", "restarts": 2, "status": status(backend("ejected", 2, 4, True))},
        {"index": 2, "pid": None, "state": "restarting", "restarts": 1, "status": None},
    ]
    merged = merge_status(view, workers)
    (listener,) = merged["listeners"]
    assert (listener["connections_active"], listener["connections_total"], listener["requests_total"]) == (4, 10, 14)
    (b,) = merged["pools"][0]["backends"]
    assert (b["active"], b["connections_total"], b["errors"]) == (3, 7, {"reset": 2})
    assert b["state"] == "ejected" and b["ejected"] is True and b["last_check"] == {"result": "passed"}
    assert b["worker_states"] == ["healthy", "ejected", None]
    assert merged["pools"][0]["no_backend_total"] == 2
    assert [w.get("requests_total") for w in merged["workers"]] == [7, 7, None]

    def snap(requests: int, active: int, ejected: int) -> dict:
        return {"reloads": {"success": 0, "failure": 0}, "last_reload_success": 1.0,
                "listeners": [{"name": "public", "connections_total": requests, "connections_active": active,
                               "rejected_total": 0, "bytes_in": 1, "bytes_out": 2, "tls_handshake_failures": None,
                               "requests": [["r", "web", "10.0.0.1:80", 200, requests]],
                               "durations": [["web", [["0.1", requests], ["+Inf", requests]], 0.5]]}],
                "pools": [{"name": "web", "no_backend_total": 0, "retries_total": 1,
                           "connect": [[["0.1", 1], ["+Inf", 1]], 0.01], "health_check": True,
                           "discovery_failures": None,
                           "backends": [{"label": "10.0.0.1:80", "state": "healthy", "active": active, "weight": 1,
                                         "errors": {}, "transitions": {"ejected": ejected, "healthy": 1},
                                         "record": True, "checks_passed": 0, "checks_failed": 0,
                                         "ejections_total": ejected}]}]}  # fmt: skip

    view_snap = snap(0, 0, 0)
    view_snap["listeners"] = []
    view_snap["pools"][0].update(retries_total=0, connect=[[["0.1", 0], ["+Inf", 0]], 0.0])
    view_snap["pools"][0]["backends"][0].update(checks_passed=9, transitions={"healthy": 1})
    total = merge_metrics(view_snap, [snap(3, 1, 1), snap(4, 2, 0)])
    (listener,) = total["listeners"]
    assert listener["requests"] == [["r", "web", "10.0.0.1:80", 200, 7]]
    assert listener["durations"] == [["web", [["0.1", 7], ["+Inf", 7]], 1.0]]
    assert (listener["connections_active"], listener["tls_handshake_failures"]) == (3, None)
    (b,) = total["pools"][0]["backends"]
    assert (b["active"], b["checks_passed"], b["ejections_total"]) == (3, 9, 1)
    assert b["transitions"] == {"healthy": 1, "ejected": 1}
    assert total["pools"][0]["retries_total"] == 2 and total["pools"][0]["connect"][0][-1] == ["+Inf", 2]

    departed = fold_departed(None, snap(3, 1, 1), view_snap)
    later = merge_metrics(view_snap, [snap(4, 2, 0)], departed)
    assert later["listeners"][0]["requests"] == [["r", "web", "10.0.0.1:80", 200, 7]], "no counter goes down"
    assert later["listeners"][0]["connections_active"] == 2, "a dead worker has no live connections"
    assert later["pools"][0]["backends"][0]["active"] == 2

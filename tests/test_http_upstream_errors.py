"""Upstream failures and client aborts: a clear status with a short body, nothing hangs, nothing
leaks (file descriptors and tasks return to their baseline after a mix of errors)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import pytest

from tests.backends_misbehaving import (  # noqa: F401  (scripted is a fixture)
    BackendConnection,
    Request,
    eventually,
    proxy_config,
    read_until,
    read_until_closed,
    respond,
    scripted,
)
from tests.client import Connection, ResponseStream
from tests.conftest import open_fds, unused_port

H = b"Host: a.test\r\n"


async def test_backend_reset_is_502_and_the_client_connection_stays_usable(make_daemon, scripted) -> None:
    async def reset_first(conn: BackendConnection, request: Request) -> bool:
        if request.target == "/reset":
            conn.reset()
            return False
        return await respond(conn, request)

    backend = await scripted(reset_first)
    daemon = await make_daemon(proxy_config([backend.port], pool={"retries": 0}))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(path="/reset")
    assert r.status == 502 and b"backend" in r.body and r.header("Connection") is None
    assert (await conn.request(path="/fine")).status == 200
    await conn.close()


async def test_backend_closing_without_answer_is_502(make_daemon, scripted) -> None:
    async def hang_up(conn: BackendConnection, request: Request) -> bool:
        return False

    backend = await scripted(hang_up)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request("POST", body=b"x")
    assert r.status == 502 and b"closed" in r.body
    r = await conn.request("POST", body=b"y")
    assert r.status == 502
    await conn.close()


BAD_RESPONSES = {
    "garbage": b"HELLO WORLD\r\n\r\n",
    "bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "content-length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "unsupported-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
    "huge-head": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 70000 + b"\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("raw", list(BAD_RESPONSES.values()), ids=list(BAD_RESPONSES))
async def test_malformed_upstream_response_is_502(make_daemon, scripted, raw) -> None:
    async def bad(conn: BackendConnection, request: Request) -> bool:
        if request.target == "/ok":
            return await respond(conn, request)
        conn.write(raw)
        await conn.drain()
        await asyncio.sleep(0.05)
        return False

    backend = await scripted(bad)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request()
    assert r.status == 502 and b"backend" in r.body
    assert (await conn.request(path="/ok")).status == 200, "client connection still usable"
    await conn.close()


async def test_response_cut_short_aborts_the_client(make_daemon, scripted) -> None:
    async def short(conn: BackendConnection, request: Request) -> bool:
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        await conn.drain()
        return False

    backend = await scripted(short)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    data = await read_until_closed(conn.reader)
    await conn.close()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"a" * 10), "the client sees a cut response"


async def test_malformed_body_after_the_head_aborts_the_client(make_daemon, scripted) -> None:
    async def bad_chunk(conn: BackendConnection, request: Request) -> bool:
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await conn.drain()
        await asyncio.sleep(0.05)
        conn.write(b"zz\r\nabc\r\n0\r\n\r\n")
        await conn.drain()
        return False

    backend = await scripted(bad_chunk)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    data = await read_until_closed(conn.reader)
    await conn.close()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"3\r\nabc\r\n"), "cut, never completed"


async def test_unanswered_reset_on_a_fresh_connection_goes_to_another_backend(make_daemon, scripted) -> None:
    """A backend that resets a new connection before answering (stopped, crashed, restarting):
    an idempotent request is sent to another backend, as nginx's ``proxy_next_upstream error``
    does; a POST never is, and ``retries: 0`` turns it off."""

    async def reset_every_request(conn: BackendConnection, request: Request) -> bool:
        conn.reset()
        return False

    dying = await scripted(reset_every_request)
    healthy = await scripted(lambda conn, request: respond(conn, request, body=request.target.encode()))
    config = proxy_config([dying.port, healthy.port], pool={"outlier_detection": False})
    daemon = await make_daemon(config)
    conn = await Connection.open(*daemon.listener_address("public"))
    for i in range(4):  # round robin: two of them go to the dying backend first
        r = await conn.request(path=f"/{i}")
        assert r.status == 200 and r.body == f"/{i}".encode()
    assert len(dying.requests) == 2 and [r.target for r in healthy.requests] == ["/0", "/1", "/2", "/3"]
    assert daemon.pools["web"].retries_total == 2
    dying_backend = next(b for b in daemon.pools["web"].backends if b.config.address.port == dying.port)
    assert dying_backend.failures_total == 2, "each reset counts against the backend"
    # a request with a body that went out is not replayed
    statuses = [(await conn.request("POST", "/p", body=b"data")).status for _ in range(2)]
    assert sorted(statuses) == [200, 502]
    await conn.close()

    strict = await make_daemon(proxy_config([dying.port, healthy.port], pool={"retries": 0, "outlier_detection": False}))
    conn = await Connection.open(*strict.listener_address("public"))
    statuses = [(await conn.request(path="/s")).status for _ in range(2)]
    assert sorted(statuses) == [200, 502], "retries: 0 sends nothing elsewhere"
    await conn.close()


async def test_connect_refused_tries_others_then_502_bounded_by_retries(make_daemon) -> None:
    dead = [unused_port() for _ in range(4)]
    daemon = await make_daemon(proxy_config(dead, pool={"retries": 1}))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request()
    assert r.status == 502 and b"refused" in r.body
    await conn.close()
    (pool,) = daemon.pools.values()
    assert sorted(b.failures_total for b in pool.backends) == [0, 0, 1, 1], "1 try + 1 retry"
    assert pool.retries_total == 1, "a retry is counted when it is made, not when an attempt fails"


async def test_no_available_backend_is_503(make_daemon, scripted) -> None:
    async def slow(conn: BackendConnection, request: Request) -> bool:
        await asyncio.sleep(0.3)
        return await respond(conn, request)

    backend = await scripted(slow)
    config = json.loads(proxy_config([backend.port]))
    config["pools"]["web"]["backends"] = [{"address": f"127.0.0.1:{backend.port}", "max_connections": 1}]
    daemon = await make_daemon(json.dumps(config))
    addr = daemon.listener_address("public")
    first, second = await Connection.open(*addr), await Connection.open(*addr)
    busy = asyncio.ensure_future(first.request())
    await eventually(lambda: len(backend.requests) == 1)
    r = await second.request()
    assert r.status == 503 and r.header("Retry-After") == "1" and b"no available backend" in r.body
    assert (await busy).status == 200
    assert (await second.request()).status == 200, "the 503 left the connection usable"
    await first.close()
    await second.close()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: connects to it hang (no SYN-ACK)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    listener.close()


async def test_connect_timeout_is_504(make_daemon, blackhole) -> None:
    daemon = await make_daemon(proxy_config([blackhole], pool={"connect_timeout": 0.3, "retries": 0}))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request()
    assert r.status == 504 and b"timed out" in r.body
    await conn.close()


async def test_response_timeout_is_504_and_the_client_connection_stays_usable(make_daemon, scripted) -> None:
    async def slow_then_fast(conn: BackendConnection, request: Request) -> bool:
        if request.target == "/slow":
            await asyncio.sleep(1.0)
        return await respond(conn, request)

    backend = await scripted(slow_then_fast)
    daemon = await make_daemon(proxy_config([backend.port], pool={"response_timeout": 0.3}))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(path="/slow")
    assert r.status == 504 and b"sent nothing" in r.body
    assert (await conn.request(path="/fast")).status == 200
    await conn.close()


async def test_response_timeout_holds_on_a_reused_connection_and_a_shorter_route_timeout(make_daemon, scripted) -> None:
    """A pooled connection keeps its timer armed between requests (no timer per request); the
    bound must still hold for the next request on it, and a route with a shorter timeout than
    the pending timer's must not wait for the longer one."""

    async def slow_on_request(conn: BackendConnection, request: Request) -> bool:
        if request.target.startswith("/slow"):
            await asyncio.sleep(3.0)
        return await respond(conn, request)

    backend = await scripted(slow_on_request)
    routes = [
        {"name": "short", "match": {"path_prefix": "/slow-short"}, "pool": "web", "timeout": 0.3},
        {"name": "rest", "pool": "web"},
    ]
    daemon = await make_daemon(proxy_config([backend.port], pool={"response_timeout": 0.6}, listener={"routes": routes}))
    conn = await Connection.open(*daemon.listener_address("public"))
    assert (await conn.request(path="/fast")).status == 200  # the upstream connection is now pooled
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await conn.request(path="/slow")  # same upstream connection, pool timeout 0.6 s
    assert r.status == 504 and 0.5 <= loop.time() - started < 2.0
    for _ in range(2):
        assert (await conn.request(path="/fast")).status == 200  # timer armed at now + 0.6 s
    started = loop.time()
    r = await conn.request(path="/slow-short")  # the route's 0.3 s, shorter than the armed timer
    assert r.status == 504 and 0.2 <= loop.time() - started < 0.55
    await conn.close()


# -- clients that go away -------------------------------------------------------------------------


async def test_client_abort_mid_request_closes_the_upstream(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 100000\r\n\r\n" + b"b" * 1000)
    await eventually(lambda: len(backend.live) == 1)
    conn.writer.transport.abort()
    await eventually(lambda: not backend.live)
    (pool,) = daemon.upstreams.pools.values()
    assert pool.idle == [] and backend.requests == []


async def test_client_abort_mid_response_closes_the_upstream(make_daemon, scripted) -> None:
    async def endless(conn: BackendConnection, request: Request) -> bool:
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        while True:
            conn.write(b"d" * 65536)
            await conn.drain()

    backend = await scripted(endless)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    await read_until(conn.reader, b"dddd")
    conn.writer.transport.abort()
    await eventually(lambda: not backend.live)
    (pool,) = daemon.upstreams.pools.values()
    assert pool.idle == []


async def test_client_gone_after_a_clean_exchange_keeps_the_upstream_pooled(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    assert (await conn.request()).status == 200
    conn.writer.transport.abort()
    await asyncio.sleep(0.1)
    (pool,) = daemon.upstreams.pools.values()
    assert len(pool.idle) == 1 and len(backend.live) == 1


async def test_paused_upstream_returned_to_the_pool_reads_again(make_daemon, scripted) -> None:
    """A response whose last bytes make the client's write buffer cross its high-water mark
    ends with its upstream connection paused; the pool must resume it, or the next request on
    that connection would hang."""
    sessions: list[set] = []

    async def fill_then_burst(conn: BackendConnection, request: Request) -> bool:
        if request.target != "/fill":
            return await respond(conn, request, body=b"b" * 16384 if request.target == "/burst" else b"small")
        # Fill the path to the (non-reading) client until the proxy's write buffer is just
        # under its high-water mark.
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        (session,) = sessions[0]
        _, high = session.transport.get_write_buffer_limits()
        while session.transport.get_write_buffer_size() < high - 12288:
            conn.write(b"1000\r\n" + b"f" * 4096 + b"\r\n")
            await conn.drain()
            await asyncio.sleep(0.001)
        conn.write(b"0\r\n\r\n")
        await conn.drain()
        return True

    backend = await scripted(fill_then_burst)
    daemon = await make_daemon(proxy_config([backend.port], pool={"response_timeout": 2}))
    (listener,) = daemon.listeners.values()
    sessions.append(listener.connections)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(daemon.listener_address("public"))
    conn = Connection(*await asyncio.open_connection(sock=sock, limit=4096))
    await conn.send(b"GET /fill HTTP/1.1\r\n" + H + b"\r\nGET /burst HTTP/1.1\r\n" + H + b"\r\n")
    await eventually(lambda: len(backend.requests) == 2 and sum(len(p.idle) for p in daemon.upstreams.pools.values()) == 1)
    stream = ResponseStream(conn)
    assert len((await stream.next()).body) > 0 and len((await stream.next()).body) == 16384
    r = await conn.request(path="/small")
    assert r.status == 200 and r.body == b"small", "the pooled connection was left paused"
    assert backend.connections == 1
    await conn.close()


# -- nothing leaks ----------------------------------------------------------------------------------


async def test_fds_and_tasks_return_to_baseline_after_a_mix_of_errors(make_daemon, scripted, blackhole) -> None:
    async def misbehave(conn: BackendConnection, request: Request) -> bool:
        target = request.target
        if target == "/reset":
            conn.reset()
            return False
        if target == "/slow":
            await asyncio.sleep(0.6)
        if target == "/stream":
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
            for _ in range(200):
                conn.write(b"s" * 65536)
                await conn.drain()
            return False
        if target == "/garbage":
            conn.write(b"NOT HTTP\r\n\r\n")
            return False
        if target == "/ws":
            conn.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
            await conn.drain()
            while await conn.reader.read(65536):
                pass
            return False
        return await respond(conn, request)

    backend = await scripted(misbehave)
    dead = unused_port()
    config = {
        "drain_timeout": 1,
        "pools": {
            "web": {"backends": [f"127.0.0.1:{backend.port}"], "response_timeout": 0.3, "max_idle_connections": 4},
            "dead": {"backends": [f"127.0.0.1:{dead}"]},
            "hole": {"backends": [f"127.0.0.1:{blackhole}"], "connect_timeout": 0.2},
        },
        "listeners": [
            {
                "name": "public",
                "bind": "127.0.0.1:0",
                "limits": {"request_header_timeout": 0.3, "client_timeout": 0.3},
                "routes": [
                    {"match": {"path_prefix": "/dead"}, "pool": "dead"},
                    {"match": {"path_prefix": "/hole"}, "pool": "hole"},
                    {"pool": "web"},
                ],
            }
        ],
    }
    daemon = await make_daemon(json.dumps(config))
    addr = daemon.listener_address("public")
    (listener,) = daemon.listeners.values()

    async def get(path: str, method: str = "GET", body: bytes | None = None) -> int:
        conn = await Connection.open(*addr)
        try:
            return (await conn.request(method, path, body=body)).status
        finally:
            await conn.close()

    async def raw(data: bytes, then_abort: bool = False, read_some: bytes | None = None) -> None:
        conn = await Connection.open(*addr)
        await conn.send(data)
        if read_some is not None:
            await read_until(conn.reader, read_some)
        if then_abort:
            conn.writer.transport.abort()
            return
        await read_until_closed(conn.reader)
        await conn.close()

    def idle_connections() -> int:
        return sum(len(p.idle) for p in daemon.upstreams.pools.values())

    assert await get("/warm") == 200
    await eventually(lambda: len(listener.connections) == 0)
    base_fds, base_tasks, base_idle = open_fds(), len(asyncio.all_tasks()), idle_connections()

    for round_ in range(3):
        jobs = [
            raw(b"GET / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n"),  # 400
            raw(b"GET / HTTP/1.1\r\n" + H + b"X-Partial: "),  # 408
            raw(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 100000\r\n\r\n" + b"b" * 1000, then_abort=True),
            raw(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 100000\r\n\r\n" + b"b" * 1000),  # 408 mid-body
            raw(b"GET /stream HTTP/1.1\r\n" + H + b"\r\n", then_abort=True, read_some=b"ssss"),
            raw(b"GET /ws HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n", then_abort=True,
                read_some=b"\r\n\r\n"),
            raw(b"POST /x HTTP/1.1\r\n" + H + b"Content-Length: 10\r\nExpect: 100-continue\r\n\r\n", then_abort=True,
                read_some=b"100 Continue"),
            raw(b"GET /a HTTP/1.1\r\n" + H + b"\r\nGET /slow HTTP/1.1\r\n" + H + b"\r\nGET /b HTTP/1.1\r\n" + H + b"\r\n",
                then_abort=True, read_some=b"ok"),
        ]
        statuses = await asyncio.gather(
            get("/reset"), get("/slow"), get("/garbage"), get("/dead"), get("/hole"), get("/fine"),
            get("/upload", "POST", b"p" * 300000), *jobs,
        )
        assert statuses[:7] == [502, 504, 502, 502, 504, 200, 200], (round_, statuses[:7])

    def settled() -> bool:
        idle_delta = idle_connections() - base_idle
        # each idle pooled connection holds two fds here (both ends) and one backend task
        return (
            len(listener.connections) == 0
            and open_fds() - 2 * idle_delta == base_fds
            and len(asyncio.all_tasks()) - idle_delta == base_tasks
        )

    try:
        await eventually(settled, timeout=10)
    except AssertionError:
        raise AssertionError(
            f"fds {open_fds()} (base {base_fds}), tasks {len(asyncio.all_tasks())} (base {base_tasks}), "
            f"idle {idle_connections()} (base {base_idle}), sessions {len(listener.connections)}"
        ) from None
    for pool in daemon.pools.values():
        assert all(b.active == 0 for b in pool.backends), "every backend acquire was released"

"""HTTP/1.1 protocol completeness through the proxy: keep-alive, HTTP/1.0, pipelining, bodies,
responses without a body, close-delimited responses, trailers, 100-continue, Upgrade tunnels,
and the upstream connection pool. Real daemon, real backends, real clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import time

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

H = b"Host: a.test\r\n"


# -- keep-alive, HTTP/1.0, pipelining -------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order_over_keepalive(make_daemon, scripted) -> None:
    async def slow_first(conn: BackendConnection, request: Request) -> bool:
        if request.target == "/slow":
            await asyncio.sleep(0.2)
        return await respond(conn, request, body=f"{request.method} {request.target} {len(request.body)}".encode())

    backend = await scripted(slow_first)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(
        b"GET /slow HTTP/1.1\r\n" + H + b"\r\n"
        b"POST /post HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
        b"POST /chunked HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /last HTTP/1.1\r\n" + H + b"\r\n"
    )
    stream = ResponseStream(conn)
    bodies = [(await stream.next()).body for _ in range(4)]
    assert bodies == [b"GET /slow 0", b"POST /post 5", b"POST /chunked 3", b"GET /last 0"]
    r = await conn.request(path="/after")
    assert r.status == 200, "the client connection is still usable"
    await conn.close()
    assert backend.connections == 1, "one upstream connection, reused for every request"


async def test_connection_close_and_keepalive_semantics(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    addr = daemon.listener_address("public")
    conn = await Connection.open(*addr)
    r = await conn.request(headers={"Connection": "close"})
    assert r.status == 200 and r.header("Connection") == "close"
    assert await conn.closed_by_peer()
    await conn.close()
    # HTTP/1.0 keep-alive: answered with Connection: keep-alive and kept open
    conn = await Connection.open(*addr)
    for _ in range(3):
        r = await conn.request(version="1.0", headers={"Connection": "keep-alive"})
        assert r.status == 200 and r.header("Connection") == "keep-alive"
    await conn.close()
    # HTTP/1.0 without Host: the backend still gets an HTTP/1.1 request with a Host
    conn = await Connection.open(*addr)
    await conn.send(b"GET /old HTTP/1.0\r\n\r\n")
    r = await conn.read_response()
    assert r.status == 200
    assert await conn.closed_by_peer()
    await conn.close()
    seen = backend.requests[-1]
    assert seen.version == "1.1" and seen.header("Host") == f"{addr[0]}:{addr[1]}"
    assert all(not req.header("Connection") for req in backend.requests), "client's Connection never forwarded"
    assert backend.connections == 1, "client-side close does not close the upstream connection"


async def test_python_http_client_keepalive_chunked_upload_head_and_get(make_daemon, http_backends) -> None:
    (port,) = await http_backends(1)
    daemon = await make_daemon(proxy_config([port]))
    host, lport = daemon.listener_address("public")

    def client() -> tuple[dict, int, str | None, bytes, dict]:
        conn = http.client.HTTPConnection(host, lport, timeout=10)
        try:
            conn.request("POST", "/up", body=iter([b"abc", b"defg", b"h" * 70000]), encode_chunked=True)
            upload = json.loads(conn.getresponse().read())
            conn.request("HEAD", "/head")
            head = conn.getresponse()
            head_body = head.read()
            conn.request("GET", "/get?q=1", headers={"X-Client": "http.client"})
            get = json.loads(conn.getresponse().read())
            return upload, head.status, head.getheader("Content-Length"), head_body, get
        finally:
            conn.close()

    upload, head_status, head_length, head_body, get = await asyncio.wait_for(asyncio.to_thread(client), 20)
    assert upload["method"] == "POST" and upload["body_bytes"] == 70007 and upload["body"].startswith("abcdefgh")
    assert ["Transfer-Encoding", "chunked"] in upload["headers"]
    assert head_status == 200 and int(head_length) > 0 and head_body == b""
    assert get["target"] == "/get?q=1" and ["X-Client", "http.client"] in get["headers"]
    (pool,) = daemon.upstreams.pools.values()
    assert pool.opened_total == 1, "one client connection, one upstream connection"


# -- bodies ---------------------------------------------------------------------------------------


async def test_request_framing_is_rebuilt_not_forwarded(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    # odd but valid chunked framing: uppercase hex, leading zeros, extensions, trailers
    await conn.send(
        b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        b"0005;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Sum: 15\r\n\r\n"
    )
    assert (await conn.read_response()).status == 200
    await conn.send(b"POST /l HTTP/1.1\r\n" + H + b"Content-Length: 005\r\n\r\nworld")
    assert (await conn.read_response()).status == 200
    await conn.close()
    chunked, sized = backend.requests
    assert chunked.body == b"hello0123456789"
    assert b"\r\n\r\n5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n" in backend.raw, "re-chunked, trailers dropped"
    assert b"ext=" not in backend.raw and b"X-Sum" not in backend.raw
    assert "trailer" not in chunked.names()
    assert sized.header("Content-Length") == "5" and sized.body == b"world"


async def test_response_framing_head_204_304_1xx(make_daemon, scripted) -> None:
    async def handler(conn: BackendConnection, request: Request) -> bool:
        if request.target == "/head":  # HEAD: Content-Length of the GET, no body
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        elif request.target == "/204":
            conn.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        elif request.target == "/304":
            conn.write(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 99\r\n\r\n")
        elif request.target == "/103":
            conn.write(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif request.target == "/chunked-head":
            conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
        await conn.drain()
        return True

    backend = await scripted(handler)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(
        b"HEAD /head HTTP/1.1\r\n" + H + b"\r\n"
        b"HEAD /chunked-head HTTP/1.1\r\n" + H + b"\r\n"
        b"GET /204 HTTP/1.1\r\n" + H + b"\r\n"
        b"GET /304 HTTP/1.1\r\n" + H + b"\r\n"
        b"GET /103 HTTP/1.1\r\n" + H + b"\r\n"
        b"GET /end HTTP/1.1\r\n" + H + b"\r\n"
    )
    data = await read_until(conn.reader, b"next")
    await conn.close()
    messages = data.split(b"HTTP/1.1 ")[1:]
    heads = [m.partition(b"\r\n\r\n") for m in messages]
    statuses = [int(m[:3]) for m in messages]
    assert statuses == [200, 200, 204, 304, 103, 200, 200]
    for (_, _, rest), status in zip(heads[:5], statuses[:5], strict=True):
        assert rest == b"", f"{status}: no body bytes after the head"
    assert b"Content-Length: 1234" in heads[0][0], "HEAD keeps the GET's length"
    assert b"Transfer-Encoding" not in heads[1][0] and b"Content-Length" not in heads[1][0]
    assert b"Content-Length" not in heads[2][0], "no length on 204"
    assert b"Content-Length: 99" in heads[3][0] and b"ETag" in heads[3][0]
    assert b"Link: </s.css>" in heads[4][0]
    assert heads[5][2] == b"ok" and heads[6][2] == b"next"


async def test_close_delimited_response_to_http11_and_http10_clients(make_daemon, scripted) -> None:
    async def until_close(conn: BackendConnection, request: Request) -> bool:
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for i in range(5):
            conn.write(b"part%d;" % i)
            await conn.drain()
            await asyncio.sleep(0.01)
        return False  # close: that ends the body

    backend = await scripted(until_close)
    daemon = await make_daemon(proxy_config([backend.port]))
    addr = daemon.listener_address("public")
    conn = await Connection.open(*addr)
    for _ in range(2):
        r = await conn.request()
        assert r.status == 200 and r.body == b"part0;part1;part2;part3;part4;"
        assert r.header("Transfer-Encoding") == "chunked", "re-framed for an HTTP/1.1 client"
    await conn.close()
    conn = await Connection.open(*addr)
    await conn.send(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
    data = await read_until_closed(conn.reader)
    await conn.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head
    assert body == b"part0;part1;part2;part3;part4;", "HTTP/1.0: delimited by the close"


async def test_chunked_response_trailers_are_dropped_safely(make_daemon, scripted) -> None:
    async def with_trailers(conn: BackendConnection, request: Request) -> bool:
        conn.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"
        )
        await conn.drain()
        return True

    backend = await scripted(with_trailers)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"GET /1 HTTP/1.1\r\n" + H + b"\r\nGET /2 HTTP/1.1\r\n" + H + b"\r\n")
    data = await read_until(conn.reader, b"0\r\n\r\n")
    data += await read_until(conn.reader, b"0\r\n\r\n")
    await conn.close()
    assert data.count(b"5\r\nhello\r\n0\r\n\r\n") == 2
    assert b"X-Checksum" not in data and b"Trailer:" not in data
    assert backend.connections == 1, "the upstream connection was reused after the trailers"


# -- Expect: 100-continue -------------------------------------------------------------------------


async def test_expect_100_continue_raw(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"POST /up HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await read_until(conn.reader, b"\r\n\r\n", timeout=0.5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await conn.send(b"hello")
    r = await conn.read_response()
    assert r.status == 200
    # an unknown expectation: 417, the body is not expected
    await conn.send(b"POST /up HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nExpect: teapot\r\n\r\n")
    r = await conn.read_response()
    assert r.status == 417
    await conn.close()
    (seen,) = backend.requests
    assert seen.body == b"hello" and "expect" not in seen.names()


async def test_curl_upload_with_expect_100_continue_does_not_stall(make_daemon, http_backends, tmp_path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is required (installed by .ci/run)")
    (port,) = await http_backends(1)
    daemon = await make_daemon(proxy_config([port]))
    host, lport = daemon.listener_address("public")
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"u" * (4 * 1024 * 1024))
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", "--expect100-timeout", "10",
        "-H", "Expect: 100-continue", "--data-binary", f"@{upload}", f"http://{host}:{lport}/up",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 25)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, err
    assert b'"body_bytes": 4194304' in out
    assert elapsed < 5, f"curl waited for its 10 s expect timeout ({elapsed:.1f}s)"


# -- Upgrade tunnels ------------------------------------------------------------------------------


async def websocket_echo(conn: BackendConnection, request: Request) -> bool:
    """Answers an upgrade with 101, then echoes tunnel bytes upper-cased until EOF."""
    if request.header("Upgrade") != "websocket":
        return await respond(conn, request, body=b"plain", status=200)
    conn.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nwelcome;")
    if conn.tunnel_rest:
        conn.write(conn.tunnel_rest.upper())
    await conn.drain()
    while True:
        data = await conn.reader.read(65536)
        if not data or data == b"bye":
            return False
        conn.write(data.upper())
        await conn.drain()


async def test_websocket_upgrade_is_tunnelled_both_ways(make_daemon, scripted) -> None:
    backend = await scripted(websocket_echo)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(
        b"GET /ws HTTP/1.1\r\n" + H + b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly"
    )
    data = await read_until(conn.reader, b"welcome;EARLY")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"Upgrade: websocket" in head and b"Connection: upgrade" in head
    assert rest == b"welcome;EARLY", "bytes sent with the request head reach the backend after the 101"
    big = b"x" * (2 * 1024 * 1024)
    conn.writer.write(big)
    echoed = bytearray()
    async with asyncio.timeout(10):
        while len(echoed) < len(big):
            echoed += await conn.reader.read(1 << 20)
    assert bytes(echoed) == big.upper()
    (seen,) = backend.requests
    assert seen.header("Upgrade") == "websocket" and "upgrade" in seen.header("Connection").lower()
    assert seen.header("Sec-WebSocket-Key") == "dGhlIHNhbXBsZSBub25jZQ=="
    # the client closes: the backend sees the end of the tunnel
    await conn.close()
    await eventually(lambda: not backend.live)


async def test_tunnel_closed_by_the_backend_closes_the_client(make_daemon, scripted) -> None:
    backend = await scripted(websocket_echo)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    await read_until(conn.reader, b"welcome;")
    await conn.send(b"bye")  # the backend ends the tunnel
    assert await read_until_closed(conn.reader) == b""
    await conn.close()


async def test_upgrade_refused_by_backend_is_answered_and_closed(make_daemon, scripted) -> None:
    async def no_upgrade(conn: BackendConnection, request: Request) -> bool:
        return await respond(conn, request, body=b"no", status=400)

    backend = await scripted(no_upgrade)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    data = await read_until_closed(conn.reader)
    await conn.close()
    assert data.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in data and data.endswith(b"no")


async def test_unexpected_101_is_a_bad_gateway(make_daemon, scripted) -> None:
    async def always_101(conn: BackendConnection, request: Request) -> bool:
        conn.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await conn.drain()
        return False

    backend = await scripted(always_101)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request()
    assert r.status == 502 and b"101" in r.body
    await conn.close()


# -- upstream connection pool ---------------------------------------------------------------------


async def test_pool_keeps_a_bounded_number_of_idle_connections(make_daemon, scripted) -> None:
    async def slow(conn: BackendConnection, request: Request) -> bool:
        await asyncio.sleep(0.2)
        return await respond(conn, request)

    backend = await scripted(slow)
    daemon = await make_daemon(proxy_config([backend.port], pool={"max_idle_connections": 2}))
    addr = daemon.listener_address("public")
    conns = [await Connection.open(*addr) for _ in range(5)]
    results = await asyncio.gather(*(c.request() for c in conns))
    assert [r.status for r in results] == [200] * 5
    assert backend.connections == 5, "five concurrent requests, five upstream connections"
    (pool,) = daemon.upstreams.pools.values()
    await eventually(lambda: len(backend.live) == 2)
    assert len(pool.idle) == 2, "only max_idle_connections are kept"
    # the kept ones are reused
    results = await asyncio.gather(*(c.request() for c in conns[:2]))
    assert backend.connections == 5
    for c in conns:
        await c.close()


async def test_idle_upstream_connections_expire(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], pool={"idle_connection_timeout": 0.3}))
    conn = await Connection.open(*daemon.listener_address("public"))
    assert (await conn.request()).status == 200
    (pool,) = daemon.upstreams.pools.values()
    assert len(pool.idle) == 1 and len(backend.live) == 1
    await eventually(lambda: not backend.live, timeout=3)
    assert pool.idle == []
    assert (await conn.request()).status == 200, "a fresh connection is dialed"
    assert backend.connections == 2
    await conn.close()


async def test_pooled_connection_closed_by_backend_is_noticed(make_daemon, scripted) -> None:
    async def close_soon(conn: BackendConnection, request: Request) -> bool:
        await respond(conn, request)
        await asyncio.sleep(0.05)
        return False  # the backend closes its idle keep-alive connection

    backend = await scripted(close_soon)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    assert (await conn.request()).status == 200
    (pool,) = daemon.upstreams.pools.values()
    await eventually(lambda: pool.idle == [])
    assert (await conn.request()).status == 200
    assert backend.connections == 2
    await conn.close()


async def test_idempotent_request_on_a_dead_reused_connection_is_retried_once(make_daemon, scripted) -> None:
    async def second_request_dies(conn: BackendConnection, request: Request) -> bool:
        if conn.raw.count(b" HTTP/1.1\r\n") >= 2:
            conn.reset()  # the idle connection died just as the request arrived
            return False
        return await respond(conn, request, body=request.target.encode())

    backend = await scripted(second_request_dies)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    assert (await conn.request(path="/1")).body == b"/1"
    r = await conn.request(path="/2")
    assert r.status == 200 and r.body == b"/2", "retried on a fresh connection"
    assert backend.connections == 2
    assert [r.target for r in backend.requests] == ["/1", "/2", "/2"]
    # not for a non-idempotent request: POST on the reused connection dies and is not replayed
    r = await conn.request("POST", "/3", body=b"data")
    assert r.status == 502
    assert [r.target for r in backend.requests] == ["/1", "/2", "/2", "/3"]
    await conn.close()


# -- half-close ---------------------------------------------------------------------------------


async def test_client_half_close_after_pipelined_requests_gets_every_response(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"".join(b"GET /%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(3)))
    conn.writer.write_eof()
    data = await read_until_closed(conn.reader)
    await conn.close()
    assert data.count(b"HTTP/1.1 200 ") == 3, "all three answered before the close"
    assert data.count(b"Connection: close") == 1, "only the last response says close"
    assert [r.target for r in backend.requests] == ["/0", "/1", "/2"]


async def test_client_half_close_mid_body_aborts_the_request(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
    await eventually(lambda: len(backend.live) == 1)
    conn.writer.write_eof()
    assert await read_until_closed(conn.reader, timeout=3) == b"", "closed at once, not after a timeout"
    await conn.close()
    await eventually(lambda: not backend.live)
    assert backend.requests == []


async def test_http10_keepalive_survives_a_local_error_response(make_daemon) -> None:
    from tests.conftest import unused_port

    daemon = await make_daemon(proxy_config([unused_port()]))
    conn = await Connection.open(*daemon.listener_address("public"))
    for _ in range(2):
        r = await conn.request(version="1.0", headers={"Connection": "keep-alive"})
        assert r.status == 502 and r.header("Connection") == "keep-alive"
    await conn.close()

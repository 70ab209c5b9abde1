"""Bad input on an http listener: malformed requests (the request-smuggling family) and limits.

Each malformed request is written in one piece on a raw socket. It must get its status (400
unless said otherwise) with ``Connection: close``, the connection must then be closed, and the
backend must never see a connection: nothing of a malformed request reaches it.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.backends_misbehaving import (  # noqa: F401  (scripted is a fixture)
    BackendConnection,
    Request,
    proxy_config,
    read_until,
    read_until_closed,
    respond,
    scripted,
)
from tests.client import Connection, ResponseStream

H = b"Host: a.test\r\n"

MALFORMED: dict[str, tuple[bytes, int]] = {
    # framing
    "content-length-and-transfer-encoding": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "transfer-encoding-and-content-length": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "duplicate-content-length-same": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    "duplicate-content-length-different": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    "content-length-list": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    "content-length-negative": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -5\r\n\r\nhello", 400),
    "content-length-plus": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    "content-length-hex": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    "content-length-empty": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\nhello", 400),
    "content-length-overflow": (
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999999\r\n\r\nhello", 400),
    "transfer-encoding-not-chunked-last": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    "transfer-encoding-unknown": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: foobar\r\n\r\n", 400),
    "transfer-encoding-two-lines-last-not-chunked": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400),
    "transfer-encoding-on-http10": (
        b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-not-hex": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-negative": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-0x": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-overflow": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-data-longer-than-size": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400),
    # field syntax
    "obs-fold": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n", 400),
    "tab-before-colon": (b"GET / HTTP/1.1\r\n" + H + b"X-A\t: b\r\n\r\n", 400),
    "empty-field-name": (b"GET / HTTP/1.1\r\n" + H + b": x\r\nContent-Length: 5\r\n\r\nhello", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    "nul-in-name": (b"GET / HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n", 400),
    "bare-cr-in-headers": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rX-B: c\r\n\r\n", 400),
    "bare-lf-in-headers": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\nX-B: c\r\n\r\n", 400),
    "bare-lf-everywhere": (b"GET / HTTP/1.1\nHost: a.test\n\n", 400),
    "control-char-in-value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    # Host
    "missing-host-http11": (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400),
    "two-hosts-same": (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n", 400),
    "host-with-space": (b"GET / HTTP/1.1\r\nHost: a.test evil.test\r\n\r\n", 400),
    "host-with-userinfo": (b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n", 400),
    # request line
    "method-lowercase": (b"get / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "method-invalid-char": (b"G@T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "method-unknown": (b"FOO / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-relative": (b"GET foo HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-with-space": (b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-control-char": (b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-non-ascii": (b"GET /\xc3\xa9 HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-fragment": (b"GET /a#frag HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-asterisk-not-options": (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-absolute-bad-scheme": (b"GET ftp://a.test/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "target-absolute-userinfo": (b"GET http://u@a.test/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "version-garbage": (b"GET / HTTX/1.1\r\n" + H + b"\r\n", 400),
    "version-minor-garbage": (b"GET / HTTP/1.1x\r\n" + H + b"\r\n", 400),
    "version-1.2": (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 400),
    "version-missing": (b"GET /\r\n" + H + b"\r\n", 400),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    # well-formed but unsupported
    "version-2.0": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    "transfer-coding-gzip-chunked": (
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    "connect-method": (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", 405),
    "upgrade-with-body": (
        b"POST / HTTP/1.1\r\n" + H + b"Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc", 400),
}


@pytest.mark.parametrize("raw,status", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_request_is_refused_and_never_reaches_a_backend(make_daemon, scripted, raw, status) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(raw)
    data = await read_until_closed(conn.reader)
    await conn.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), data
    assert b"\r\nConnection: close" in head
    assert body.startswith(b"%d " % status), "a short text body says what went wrong"
    await asyncio.sleep(0.05)
    assert backend.connections == 0, "a malformed request must not reach the backend"


async def test_pipelined_malformed_request_is_answered_after_the_good_ones(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(
        b"GET /one HTTP/1.1\r\n" + H + b"\r\n"
        b"GET /two HTTP/1.1\r\n" + H + b"\r\n"
        b"GET /three HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    stream = ResponseStream(conn)
    first, second, third = [await stream.next() for _ in range(3)]
    assert (first.status, second.status, third.status) == (200, 200, 400)
    assert third.header("Connection") == "close"
    assert await conn.closed_by_peer()
    await conn.close()
    assert [r.target for r in backend.requests] == ["/one", "/two"]


# -- limits ---------------------------------------------------------------------------------------


async def test_header_bytes_limit_431(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], limits={"max_header_bytes": 1024}))
    addr = daemon.listener_address("public")
    conn = await Connection.open(*addr)
    r = await conn.request(headers={"X-Big": "a" * 900})
    assert r.status == 200, "under the limit"
    await conn.close()

    conn = await Connection.open(*addr)
    await conn.send(b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 2000 + b"\r\n\r\n")  # one write
    data = await read_until_closed(conn.reader)
    assert data.startswith(b"HTTP/1.1 431 ")
    await conn.close()

    conn = await Connection.open(*addr)
    await conn.send(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + H + b"\r\n")  # a long request line
    assert (await read_until_closed(conn.reader)).startswith(b"HTTP/1.1 431 ")
    await conn.close()
    assert len(backend.requests) == 1


async def test_endless_header_field_is_cut_off_at_the_limit(make_daemon, scripted) -> None:
    """A field that never ends must not make lbproxy buffer it: 431 once past the limit."""
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], limits={"max_header_bytes": 4096}))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"GET / HTTP/1.1\r\n" + H + b"X-Endless: ")
    answer = b""
    for _ in range(64):  # up to 64 KiB, 16 times the limit, in separate writes
        await asyncio.sleep(0.005)
        try:
            await conn.send(b"a" * 1024)
        except (ConnectionError, OSError):
            break
    answer = await read_until_closed(conn.reader)
    assert answer.startswith(b"HTTP/1.1 431 ")
    await conn.close()
    assert backend.connections == 0


async def test_header_count_limit_431(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], limits={"max_header_count": 10}))
    addr = daemon.listener_address("public")
    conn = await Connection.open(*addr)
    r = await conn.request(headers={f"X-{i}": "v" for i in range(9)})
    assert r.status == 200  # Host + 9
    await conn.close()
    conn = await Connection.open(*addr)
    await conn.send(b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(10)) + b"\r\n")
    assert (await read_until_closed(conn.reader)).startswith(b"HTTP/1.1 431 ")
    await conn.close()
    assert len(backend.requests) == 1


async def test_body_limit_413(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], limits={"max_body_bytes": 1000}))
    addr = daemon.listener_address("public")
    conn = await Connection.open(*addr)
    r = await conn.request("POST", body=b"x" * 1000)
    assert r.status == 200 and backend.requests[-1].body == b"x" * 1000
    await conn.close()

    # declared too large: refused from the head, without waiting for the body
    conn = await Connection.open(*addr)
    await conn.send(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1001\r\nExpect: 100-continue\r\n\r\n")
    data = await read_until_closed(conn.reader)
    assert data.startswith(b"HTTP/1.1 413 "), "no 100 Continue for a body that is too large"
    await conn.close()

    # chunked, found too large while streaming
    conn = await Connection.open(*addr)
    await conn.send(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + b"200\r\n" + b"y" * 512 + b"\r\n")
    await asyncio.sleep(0.05)
    await conn.send(b"200\r\n" + b"y" * 512 + b"\r\n0\r\n\r\n")
    assert (await read_until_closed(conn.reader)).startswith(b"HTTP/1.1 413 ")
    await conn.close()
    assert len(backend.requests) == 1, "the oversized bodies never completed at the backend"


async def test_request_header_timeout_408(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], limits={"request_header_timeout": 0.3}))
    addr = daemon.listener_address("public")
    # slowloris: a head that never ends, one byte at a time, is cut off at the timeout
    conn = await Connection.open(*addr)
    started = time.monotonic()
    await conn.send(b"GET / HTTP/1.1\r\n")
    for _ in range(10):
        await asyncio.sleep(0.1)
        try:
            await conn.send(b"X")
        except (ConnectionError, OSError):
            break
    data = await read_until_closed(conn.reader, timeout=3)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 1.5
    await conn.close()
    # a connection that sends nothing is closed (silently) after the same time
    conn = await Connection.open(*addr)
    assert await read_until_closed(conn.reader, timeout=3) == b""
    await conn.close()
    assert backend.connections == 0


async def test_client_body_timeout_408_frees_the_upstream(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], limits={"client_timeout": 0.3}))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n" + b"z" * 10)
    data = await read_until_closed(conn.reader, timeout=3)
    assert data.startswith(b"HTTP/1.1 408 ")
    await conn.close()
    await asyncio.sleep(0.1)
    assert backend.requests == [] and not backend.live, "the half-sent request was aborted upstream"


async def test_keepalive_timeout_closes_idle_client(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], limits={"keepalive_timeout": 0.4}))
    conn = await Connection.open(*daemon.listener_address("public"))
    assert (await conn.request()).status == 200
    started = time.monotonic()
    assert not await conn.closed_by_peer(timeout=0.2), "still open well before the timeout"
    assert (await conn.request()).status == 200, "and usable"
    started = time.monotonic()
    assert await conn.closed_by_peer(timeout=3)
    assert 0.3 < time.monotonic() - started < 2
    await conn.close()


async def test_slow_backend_does_not_count_against_the_client_body_timeout(make_daemon, scripted) -> None:
    """While lbproxy holds the client back (the backend reads slowly), the client isn't idle."""

    async def slow_reader(conn: BackendConnection, request: Request) -> bool:
        return await respond(conn, request, body=b"%d" % len(request.body))

    backend = await scripted(slow_reader)
    daemon = await make_daemon(proxy_config([backend.port], limits={"client_timeout": 0.5}))
    conn = await Connection.open(*daemon.listener_address("public"))
    size = 8 * 1024 * 1024
    await conn.send(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % size)
    # Stall the backend's reads for longer than client_timeout by pausing its transport.
    await asyncio.sleep(0.05)
    (bconn,) = backend.live
    bconn.writer.transport.pause_reading()
    conn.writer.write(b"q" * size)
    await asyncio.sleep(1.0)
    bconn.writer.transport.resume_reading()
    async with asyncio.timeout(10):
        await conn.writer.drain()
    r = await conn.read_response()
    assert r.status == 200 and r.body == b"%d" % size
    await conn.close()


async def test_refused_request_response_is_not_lost_to_a_reset(make_daemon, scripted) -> None:
    """413 while the client is still sending: lbproxy lingers instead of resetting, so the
    client reads the answer."""
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], limits={"max_body_bytes": 10}))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(20):
        try:
            conn.writer.write(b"1000\r\n" + b"b" * 4096 + b"\r\n")
        except (ConnectionError, OSError):
            break
        await asyncio.sleep(0.002)
    head = await read_until(conn.reader, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    await conn.close()

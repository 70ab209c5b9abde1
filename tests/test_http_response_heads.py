"""Response heads relayed as bytes (issue 8's fast path) and field by field (the general path):
the client sees the same thing either way. Each test makes a backend answer in one particular
shape and checks the exact bytes the client receives."""

from __future__ import annotations

import asyncio
import types

import httptools
import pytest

from lbproxy.l7 import upstream as upstream_module
from tests.backends_misbehaving import (  # noqa: F401  (scripted is a fixture)
    BackendConnection,
    Request,
    proxy_config,
    read_until,
    scripted,
)
from tests.client import Connection

OK = b"HTTP/1.1 200 OK\r\n"


def answering(*pieces: bytes, pause: float = 0.0, keep: bool = True):  # type: ignore[no-untyped-def]
    """A handler writing ``pieces`` as separate writes (``pause`` seconds apart), then keeping
    the connection (or closing it: ``keep=False``)."""

    async def handler(conn: BackendConnection, request: Request) -> bool:
        for piece in pieces:
            conn.write(piece)
            await conn.drain()
            if pause:
                await asyncio.sleep(pause)
        return keep

    return handler


async def raw_response(daemon, request: bytes) -> tuple[bytes, bytes, Connection]:  # type: ignore[no-untyped-def]
    """Send ``request``; return the response head (through the blank line), what came after
    it so far, and the open connection."""
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(request)
    data = await read_until(conn.reader, b"\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n", rest, conn


def fields(head: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            out.append((name.lower(), value.strip()))
    return out


GET = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"


async def test_backend_close_is_not_relayed_to_a_keep_alive_client(make_daemon, scripted) -> None:
    backend = await scripted(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"))
    daemon = await make_daemon(proxy_config([backend.port]))
    head, rest, conn = await raw_response(daemon, GET)
    assert b"connection" not in dict(fields(head)), head
    assert rest == b"hi"
    # The client connection stays open: a second request is answered on it.
    r = await conn.request(host="a.example")
    assert r.status == 200 and r.body == b"hi"
    await conn.close()


async def test_keep_alive_from_the_backend_is_kept_once_and_close_replaces_it(make_daemon, scripted) -> None:
    backend = await scripted(answering(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"))
    daemon = await make_daemon(proxy_config([backend.port]))
    head, _, conn = await raw_response(daemon, GET)
    assert [v for n, v in fields(head) if n == b"connection"] == [b"keep-alive"]
    await conn.close()
    head, _, conn = await raw_response(daemon, b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
    assert [v for n, v in fields(head) if n == b"connection"] == [b"close"]
    assert await conn.closed_by_peer()
    await conn.close()
    head, _, conn = await raw_response(daemon, b"GET / HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert [v for n, v in fields(head) if n == b"connection"] == [b"keep-alive"]
    await conn.close()


async def test_fields_and_reason_phrase_are_relayed_in_order(make_daemon, scripted) -> None:
    backend = await scripted(answering(
        b"HTTP/1.1 200 Fine Thanks\r\nServer: test\r\nX-Request-Id: from-backend\r\nContent-Length: 02\r\n"
        b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: keep-alive\r\n\r\nhi"
    ))
    daemon = await make_daemon(proxy_config([backend.port]))
    head, rest, conn = await raw_response(daemon, GET)
    await conn.close()
    assert head.startswith(b"HTTP/1.1 200 Fine Thanks\r\n")
    got = fields(head)
    assert [n for n, _ in got if n in (b"server", b"set-cookie")] == [b"server", b"set-cookie", b"set-cookie"]
    assert [v for n, v in got if n == b"set-cookie"] == [b"a=1", b"b=2"]
    assert int(dict(got)[b"content-length"]) == 2
    (request_id,) = [v for n, v in got if n == b"x-request-id"]
    assert request_id != b"from-backend", "the backend's X-Request-Id is replaced by lbproxy's"
    assert request_id == backend.requests[0].header("X-Request-Id").encode()
    assert rest == b"hi"


async def test_an_http10_backend_status_line_is_rewritten(make_daemon, scripted) -> None:
    backend = await scripted(answering(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"))
    daemon = await make_daemon(proxy_config([backend.port]))
    head, rest, conn = await raw_response(daemon, GET)
    await conn.close()
    assert head.startswith(OK) and rest == b"hi"


async def test_connection_listing_other_fields_drops_them(make_daemon, scripted) -> None:
    backend = await scripted(answering(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Kept: 2\r\nContent-Length: 2\r\n\r\nhi"
    ))
    daemon = await make_daemon(proxy_config([backend.port]))
    head, _, conn = await raw_response(daemon, GET)
    await conn.close()
    names = [n for n, _ in fields(head)]
    assert b"x-secret" not in names and b"x-kept" in names and b"connection" not in names


async def test_a_head_arriving_a_byte_at_a_time_is_relayed_whole(make_daemon, scripted) -> None:
    response = b"\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
    backend = await scripted(answering(*(response[i : i + 1] for i in range(len(response))), pause=0.001))
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    for _ in range(2):  # twice on the same upstream connection: nothing of the first one lingers
        r = await conn.request(host="a.example")
        assert r.status == 200 and r.body == b"hello" and r.header("X-A") == "1"
    await conn.close()
    assert backend.connections == 1


async def test_interim_responses_then_the_final_one(make_daemon, scripted) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    for handler in (answering(early + final), answering(early, final, pause=0.05)):
        backend = await scripted(handler)
        daemon = await make_daemon(proxy_config([backend.port]))
        conn = await Connection.open(*daemon.listener_address("public"))
        await conn.send(GET)
        data = await read_until(conn.reader, b"\r\n\r\nhi")
        await conn.close()
        assert data.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"), data


async def test_no_length_becomes_chunked_and_chunked_is_rechunked(make_daemon, scripted) -> None:
    for response, keep in (
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", True),
    ):
        backend = await scripted(answering(response, keep=keep))
        daemon = await make_daemon(proxy_config([backend.port]))
        head, rest, conn = await raw_response(daemon, GET)
        assert dict(fields(head)).get(b"transfer-encoding") == b"chunked", head
        assert b"content-length" not in dict(fields(head))
        if not rest.endswith(b"0\r\n\r\n"):
            rest += await read_until(conn.reader, b"0\r\n\r\n")
        assert rest == b"5\r\nhello\r\n0\r\n\r\n"
        r = await conn.request(host="a.example")  # the client connection survives the upstream close
        assert r.body == b"hello"
        await conn.close()


async def test_bad_response_heads_get_502(make_daemon, scripted) -> None:
    for response in (
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",  # bare LF
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhi",
    ):
        backend = await scripted(answering(response))
        daemon = await make_daemon(proxy_config([backend.port]))
        conn = await Connection.open(*daemon.listener_address("public"))
        r = await conn.request(host="a.example")
        await conn.close()
        assert r.status == 502, response[:60]


async def test_alternating_heads_on_one_upstream_connection(make_daemon, scripted) -> None:
    """The verdict kept for a repeated head never leaks into a different one."""
    heads = [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nContent-Length: 2\r\n\r\nhi",
    ]
    turn = 0

    async def alternate(conn: BackendConnection, request: Request) -> bool:
        nonlocal turn
        conn.write(heads[turn % 2])
        turn += 1
        await conn.drain()
        return True

    backend = await scripted(alternate)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    for i in range(6):
        r = await conn.request(host="a.example")
        assert r.body == b"hi"
        assert (r.header("X-Secret") is None) == (i % 2 == 0), (i, r.headers)
    await conn.close()
    assert backend.connections == 1


class _CountingParser:
    """httptools' response parser, counting the reads fed to it."""

    feeds = 0

    def __init__(self, protocol: object) -> None:
        self._inner = httptools.HttpResponseParser(protocol)

    def feed_data(self, data: bytes) -> None:
        _CountingParser.feeds += 1
        self._inner.feed_data(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def count_parser_feeds(monkeypatch) -> type[_CountingParser]:  # type: ignore[no-untyped-def]
    namespace = types.SimpleNamespace(**{n: getattr(httptools, n) for n in dir(httptools) if not n.startswith("_")})
    namespace.HttpResponseParser = _CountingParser
    monkeypatch.setattr(upstream_module, "httptools", namespace)
    _CountingParser.feeds = 0
    return _CountingParser


@pytest.mark.interpreted
async def test_a_repeated_response_in_one_read_skips_the_parser(make_daemon, scripted, monkeypatch) -> None:
    """Issue 8: a whole response in one read, with the same head as the last one, is relayed
    without feeding httptools, byte for byte as the parser's path relays it."""
    parser = count_parser_feeds(monkeypatch)
    response = b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 5\r\n\r\nhello"
    backend = await scripted(answering(response))
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    heads = []
    for _ in range(8):
        await conn.send(GET)
        data = await read_until(conn.reader, b"hello")
        head, _, body = data.partition(b"\r\n\r\n")
        assert body == b"hello"
        heads.append(b"\n".join(line for line in head.split(b"\r\n") if not line.startswith(b"X-Request-Id")))
    await conn.close()
    assert backend.connections == 1
    assert heads == [b"HTTP/1.1 200 OK\nServer: s\nContent-Length: 5"] * 8
    assert parser.feeds == 1, "only the first response went through the parser"


@pytest.mark.interpreted
async def test_a_repeated_head_with_a_split_or_different_body_goes_through_the_parser(
    make_daemon, scripted, monkeypatch
) -> None:
    parser = count_parser_feeds(monkeypatch)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    turn = 0

    async def shapes(conn: BackendConnection, request: Request) -> bool:
        nonlocal turn
        turn += 1
        if turn == 2:  # the body in two reads
            conn.write(head + b"he")
            await conn.drain()
            await asyncio.sleep(0.05)
            conn.write(b"llo")
        elif turn == 3:  # the same head, a body cut short, then the connection closed
            conn.write(head + b"hel")
            await conn.drain()
            return False
        else:
            conn.write(head + b"hello")
        await conn.drain()
        return True

    backend = await scripted(shapes)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(host="a.example")
    assert (r.status, r.body) == (200, b"hello")
    r = await conn.request(host="a.example")
    assert (r.status, r.body) == (200, b"hello")
    assert parser.feeds == 3, "the split response was parsed"
    await conn.close()
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(GET)
    # A truncated response whose head was already sent: the client connection is closed.
    assert await conn.closed_by_peer()
    await conn.close()
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(host="a.example")  # a fresh backend connection, parsed again
    assert (r.status, r.body) == (200, b"hello")
    await conn.close()


@pytest.mark.interpreted
async def test_a_repeated_response_over_a_new_body_limit_gets_502(make_daemon, scripted, monkeypatch) -> None:
    """The parser-less path enforces max_response_body_bytes like the parser's path: a reload
    lowers the limit under a response the pooled connection has already seen once."""
    from lbproxy.config.loader import load_config_text

    parser = count_parser_feeds(monkeypatch)
    backend = await scripted(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
    daemon = await make_daemon(proxy_config([backend.port], pool={"max_response_body_bytes": 100}))
    conn = await Connection.open(*daemon.listener_address("public"))
    for _ in range(2):
        r = await conn.request(host="a.example")
        assert (r.status, r.body) == (200, b"hello")
    await conn.close()
    assert parser.feeds == 1
    problems = await daemon.reload(load_config_text(proxy_config([backend.port], pool={"max_response_body_bytes": 3})))
    assert not problems
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(host="a.example")
    await conn.close()
    assert r.status == 502
    assert parser.feeds == 1, "the over-limit response took the parser-less path"


async def test_a_bad_response_caught_before_anything_is_written_gets_502(make_daemon, scripted) -> None:
    """A response found bad in the read that brought its head (here a body over
    max_response_body_bytes) reaches the client as a 502, not as a cut connection: nothing of
    it had been written yet. The client connection stays usable."""
    backend = await scripted(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
    daemon = await make_daemon(proxy_config([backend.port], pool={"max_response_body_bytes": 3}))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(host="a.example")
    assert r.status == 502 and b"max_response_body_bytes" in r.body, (r.status, r.body)
    r = await conn.request(host="a.example")
    assert r.status == 502
    await conn.close()


async def test_empty_lines_before_a_status_line_in_any_mix_are_skipped(make_daemon, scripted) -> None:
    """llhttp skips CR and LF in any mix before a message; the head lbproxy relays starts where
    the status line does, its fields all kept."""
    for prefix in (b"\r\r\n", b"\n\r\n\r\n", b"\n"):
        backend = await scripted(
            answering(prefix + b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nContent-Type: text/x\r\nContent-Length: 2\r\n\r\nok")
        )
        daemon = await make_daemon(proxy_config([backend.port]))
        head, rest, conn = await raw_response(daemon, GET)
        await conn.close()
        assert head.startswith(b"HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nContent-Type: text/x\r\nContent-Length: 2\r\n"), (prefix, head)
        assert head.count(b"HTTP/1.1") == 1 and rest == b"ok", (prefix, head, rest)


async def test_a_second_response_in_the_same_read_is_dropped_not_a_502(make_daemon, scripted) -> None:
    """A backend that answers twice in one write: the first response is relayed whole, the
    extra one dropped with the backend connection (never reused), and no failure is counted."""
    backend = await scripted(
        answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    )
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    for _ in range(2):
        r = await conn.request(host="a.example")
        assert (r.status, r.body) == (200, b"ok")
    await conn.close()
    assert backend.connections == 2, "the connection that sent an extra response was not reused"
    pool = daemon.pools["web"]
    assert pool.backends[0].failures_total == 0


async def test_an_interim_response_with_a_body_is_refused(make_daemon, scripted) -> None:
    """A 1xx has no content. One that announces a body (llhttp would frame it by its
    Content-Length) gets the client a 502, and no 1xx ever carries framing fields to the client:
    the client's framing can't be steered by the backend's."""
    backend = await scripted(
        answering(
            b"HTTP/1.1 104 X\r\nContent-Length: 24\r\n\r\nZ\r\nContent-Length: 100\r\n"
            b"HTTP/1.1 200 OK\r\nX: y\r\n\r\nabc",
            keep=False,
        )
    )
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(GET)
    data = await read_until(conn.reader, b"with a body from backend\n")
    # The client connection is still in step: the next request gets the same two messages.
    r = await conn.request(host="a.example")
    assert r.status == 104 and r.body == b""
    r = await conn.read_response()
    await conn.close()
    assert r.status == 502
    assert data.startswith(b"HTTP/1.1 104 "), data
    interim, _, final = data.partition(b"\r\n\r\n")
    assert b"content-length" not in interim.lower(), interim
    assert final.startswith(b"HTTP/1.1 502 "), data
    assert b"abc" not in final and b"Content-Length: 100" not in data, data


async def test_interim_responses_keep_memory_bounded(make_daemon, scripted) -> None:
    """1xx after 1xx (a long 102 Processing): what lbproxy keeps of them doesn't grow."""
    kept: list[int] = []
    interims = 300

    async def processing(conn: BackendConnection, request: Request) -> bool:
        for _ in range(interims):
            conn.write(b"HTTP/1.1 102 Processing\r\n\r\n")
            await conn.drain()
            await asyncio.sleep(0)
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await conn.drain()
        return True

    backend = await scripted(processing)
    daemon = await make_daemon(proxy_config([backend.port]))
    original = upstream_module.UpstreamConnection.on_headers_complete

    def watching(self: upstream_module.UpstreamConnection) -> None:
        original(self)
        kept.append(len(self.raw))

    upstream_module.UpstreamConnection.on_headers_complete = watching  # type: ignore[method-assign]
    try:
        conn = await Connection.open(*daemon.listener_address("public"))
        await conn.send(GET)
        data = await read_until(conn.reader, b"\r\n\r\nok")
        await conn.close()
    finally:
        upstream_module.UpstreamConnection.on_headers_complete = original  # type: ignore[method-assign]
    assert data.count(b"HTTP/1.1 102 Processing\r\n") == interims and b"HTTP/1.1 200 OK\r\n" in data
    assert len(kept) == interims + 1
    assert max(kept) < 4096, f"raw grew to {max(kept)} bytes over {interims} interim responses"


async def test_a_status_line_with_control_characters_is_rewritten(make_daemon, scripted) -> None:
    """llhttp lets NUL, DEL and ESC through in a reason phrase, and a status line without the
    space after the code: those reach the client as lbproxy's own clean status line."""
    for line, clean in (
        (b"HTTP/1.1 200 O\x00K\x1b[2J\r\n", b"HTTP/1.1 200 OK\r\n"),
        (b"HTTP/1.1 404\r\n", b"HTTP/1.1 404 Not Found\r\n"),
        (b"HTTP/1.1 200 Fine \x7f\r\n", b"HTTP/1.1 200 OK\r\n"),
    ):
        for extra in (b"", b"Connection: keep-alive, X-B\r\nX-B: 1\r\nContent-Length: 2\r\n"):  # fast, general path
            fields = extra or b"Content-Length: 2\r\n"
            backend = await scripted(answering(line + fields + b"\r\nok"))
            daemon = await make_daemon(proxy_config([backend.port]))
            head, _, conn = await raw_response(daemon, GET)
            await conn.close()
            assert head.startswith(clean), (line, head)

"""Header rules through the proxy: hop-by-hop fields removed both ways, forwarding headers
(X-Forwarded-*, X-Request-Id) added, trusted only from ``trusted_proxies``, and never removable
through ``Connection``."""

from __future__ import annotations

from tests.backends_misbehaving import (  # noqa: F401  (scripted is a fixture)
    BackendConnection,
    Request,
    proxy_config,
    respond,
    scripted,
)
from tests.client import Connection

H = b"Host: shop.example\r\n"


async def test_hop_by_hop_request_headers_are_removed(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(
        b"GET / HTTP/1.1\r\n" + H + b"Connection: keep-alive, X-Hop-Secret, x-other-hop\r\n"
        b"X-Hop-Secret: 1\r\nX-Other-Hop: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nX-End-To-End: kept\r\n\r\n"
    )
    assert (await conn.read_response()).status == 200
    await conn.close()
    (seen,) = backend.requests
    for name in ("connection", "x-hop-secret", "x-other-hop", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"):
        assert name not in seen.names(), name
    assert seen.header("X-End-To-End") == "kept"


async def test_hop_by_hop_response_headers_are_removed(make_daemon, scripted) -> None:
    async def hoppy(conn: BackendConnection, request: Request) -> bool:
        return await respond(
            conn, request, body=b"ok",
            headers="Connection: X-Backend-Secret\r\nX-Backend-Secret: s3cr3t\r\nKeep-Alive: timeout=9\r\n"
            "Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\nX-Kept: yes\r\n",
        )

    backend = await scripted(hoppy)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request()
    names = [n.lower() for n, _ in r.headers]
    for name in ("x-backend-secret", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "connection"):
        assert name not in names, name
    assert r.header("X-Kept") == "yes" and r.body == b"ok"
    assert (await conn.request()).status == 200, "the backend's Connection: token did not close us"
    await conn.close()


async def test_forwarding_headers_from_an_untrusted_client_are_replaced(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(
        b"GET /x HTTP/1.1\r\n" + H + b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=6.6.6.6\r\n\r\n"
    )
    r = await conn.read_response()
    await conn.close()
    (seen,) = backend.requests
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.all("X-Forwarded-Host") == ["shop.example"]
    assert seen.all("Host") == ["shop.example"]
    assert "forwarded" not in seen.names()
    request_id = seen.header("X-Request-Id")
    assert request_id and r.header("X-Request-Id") == request_id, "generated, sent up and returned"


async def test_forwarding_headers_from_a_trusted_proxy_are_extended(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], listener={"trusted_proxies": ["127.0.0.0/8"]}))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(
        b"GET /x HTTP/1.1\r\n" + H + b"X-Forwarded-For: 203.0.113.9\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: www.example\r\nForwarded: for=203.0.113.9\r\n\r\n"
    )
    await conn.read_response()
    await conn.close()
    (seen,) = backend.requests
    assert seen.all("X-Forwarded-For") == ["203.0.113.9, 127.0.0.1"]
    assert seen.all("X-Forwarded-Proto") == ["https"]
    assert seen.all("X-Forwarded-Host") == ["www.example"]
    assert seen.all("Forwarded") == ["for=203.0.113.9"]


async def test_request_id_kept_when_valid_replaced_when_not(make_daemon, scripted) -> None:
    async def with_own_id(conn: BackendConnection, request: Request) -> bool:
        return await respond(conn, request, headers="X-Request-Id: backend-made\r\n")

    backend = await scripted(with_own_id)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(headers={"X-Request-Id": "abc-123"})
    assert [v for n, v in r.headers if n.lower() == "x-request-id"] == ["abc-123"], "exactly one, the client's"
    assert backend.requests[-1].all("X-Request-Id") == ["abc-123"]
    for bad in ("has space", "x" * 200, "semi;colon"):
        r = await conn.request(headers={"X-Request-Id": bad})
        generated = backend.requests[-1].all("X-Request-Id")
        assert len(generated) == 1 and generated[0] != bad
        assert r.header("X-Request-Id") == generated[0]
    r = await conn.request()
    ids = {req.header("X-Request-Id") for req in backend.requests}
    assert len(ids) == len(backend.requests), "every generated id is new"
    await conn.close()


async def test_connection_cannot_strip_headers_lbproxy_adds(make_daemon, scripted) -> None:
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(
        b"POST /x HTTP/1.1\r\n" + H + b"Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, "
        b"X-Request-Id, Host, Content-Length, Transfer-Encoding\r\nX-Request-Id: mine-1\r\n"
        b"Content-Length: 4\r\n\r\nbody"
    )
    r = await conn.read_response()
    assert r.status == 200
    await conn.close()
    (seen,) = backend.requests
    assert seen.all("Host") == ["shop.example"]
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.all("X-Forwarded-Host") == ["shop.example"]
    assert seen.all("X-Request-Id") == ["mine-1"]
    assert seen.body == b"body" and seen.header("Content-Length") == "4"


async def test_local_error_responses_carry_the_request_id(make_daemon, scripted) -> None:
    from tests.conftest import unused_port

    daemon = await make_daemon(proxy_config([unused_port()]))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(headers={"X-Request-Id": "trace-7"})
    assert r.status == 502 and r.header("X-Request-Id") == "trace-7"
    await conn.close()


def test_valid_host_rules() -> None:
    from lbproxy.l7.headers import connection_tokens, valid_host

    for good in (b"a.test", b"a.test:8080", b"[::1]:80", b"10.0.0.1", b"", b"xn--caf-dma.test", b"a.test:"):
        assert valid_host(good), good
    for bad in (b"a b", b"u@a.test", b"a.test:80:80", b"a.test/x", b"a\tb", b"caf\xc3\xa9.test", b"[::1", b"a.test:8o"):
        assert not valid_host(bad), bad
    assert connection_tokens(b" Keep-Alive ,X-A,, upgrade ") == [b"keep-alive", b"x-a", b"upgrade"]

"""PROXY protocol against real peers (Debian's nginx and haproxy, installed by ``.ci/run``).

- lbproxy sends: a tcp listener (and an http listener) with ``proxy_protocol: v1|v2`` in front of
  nginx ``listen ... proxy_protocol``, which answers with the ``$proxy_protocol_addr`` it parsed.
- lbproxy accepts: haproxy ``send-proxy`` / ``send-proxy-v2`` in front of lbproxy's http
  listener; the backend behind lbproxy sees the original client in ``X-Forwarded-For``.

Clients connect from distinct loopback addresses (127.0.0.X), so the address that arrives can
only be right if it travelled in the PROXY header.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client import Connection
from tests.l4_support import close_writer, haproxy_in_front, nginx_echo, open_from, tcp_yaml


@pytest.fixture(scope="module")
def nginx_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with nginx_echo(tmp_path_factory.mktemp("nginx")) as port:
        yield port


async def http_get_raw(host: str, port: int, source: str) -> tuple[str, int]:
    """GET / over a fresh connection from ``source``; returns (body, our local port)."""
    reader, writer = await open_from(host, port, source)
    local_port = writer.get_extra_info("sockname")[1]
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: interop\r\n\r\n")
        async with asyncio.timeout(5):
            response = await reader.read()
    finally:
        await close_writer(writer)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response[:200]
    return body.decode().strip(), local_port


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_tcp_listener_sends_proxy_protocol_to_nginx(make_daemon, nginx_port, version) -> None:
    daemon = await make_daemon(tcp_yaml([nginx_port], pool=f"proxy_protocol: {version}"))
    host, port = daemon.listener_address("raw")
    for source in ("127.0.0.6", "127.0.0.7"):
        body, local_port = await http_get_raw(host, port, source)
        assert body == f"{source}:{local_port}"


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_http_pool_sends_proxy_protocol_to_nginx(make_daemon, nginx_port, version) -> None:
    daemon = await make_daemon(
        f"pools:\n  web:\n    proxy_protocol: {version}\n    backends: ['127.0.0.1:{nginx_port}']\n"
        "listeners:\n  - {name: web, bind: 127.0.0.1:0, mode: http, routes: [{pool: web}]}\n"
    )
    host, port = daemon.listener_address("web")
    for source in ("127.0.0.8", "127.0.0.9"):
        reader, writer = await open_from(host, port, source)
        conn = Connection(reader, writer)
        local_port = writer.get_extra_info("sockname")[1]
        try:
            for _ in range(2):  # keep-alive: each request's upstream header names this client
                response = await conn.request("GET", "/")
                assert response.status == 200
                assert response.body.decode().strip() == f"{source}:{local_port}"
        finally:
            await conn.close()


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
async def test_haproxy_in_front_of_the_http_listener(make_daemon, http_backends, tmp_path: Path, send) -> None:
    (web,) = await http_backends(1)
    daemon = await make_daemon(
        f"pools:\n  web:\n    backends: ['127.0.0.1:{web}']\n"
        "listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    mode: http\n    routes: [{pool: web}]\n"
        "    accept_proxy_protocol: true\n    proxy_protocol_from: [127.0.0.1/32]\n"
    )
    _, lb_port = daemon.listener_address("web")
    with haproxy_in_front(tmp_path, lb_port, send) as front:
        for source in ("127.0.0.10", "127.0.0.11"):
            reader, writer = await open_from("127.0.0.1", front, source)
            conn = Connection(reader, writer)
            try:
                response = await conn.request("GET", "/through-haproxy")
            finally:
                await conn.close()
            assert response.status == 200
            headers = {k.lower(): v for k, v in response.json()["headers"]}
            assert headers["x-forwarded-for"] == source


async def test_haproxy_then_lbproxy_tcp_then_nginx(make_daemon, nginx_port, tmp_path: Path) -> None:
    """Two hops of PROXY protocol: haproxy → (v2) lbproxy tcp → (v1) nginx keeps the client."""
    daemon = await make_daemon(
        tcp_yaml([nginx_port], pool="proxy_protocol: v1", listener="accept_proxy_protocol: true")
    )
    _, lb_port = daemon.listener_address("raw")
    with haproxy_in_front(tmp_path, lb_port, "send-proxy-v2") as front:
        body, local_port = await http_get_raw("127.0.0.1", front, "127.0.0.12")
    assert body == f"127.0.0.12:{local_port}"

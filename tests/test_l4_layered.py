"""The layered setup of ``config/layered.yaml``: a tcp listener in front of two http listeners,
PROXY protocol v2 between them, so the web backends see the real client.

The file itself is loaded; only its addresses are replaced by sockets bound to port 0 (handed to
the daemon, so there is no race for ports) and by real backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lbproxy.config.loader import load_config_text
from lbproxy.config.model import Address
from lbproxy.net.bind import bind_socket
from lbproxy.runtime.daemon import Daemon
from tests.client import Connection
from tests.l4_support import close_writer, closed_without_data, eventually, open_from

LAYERED = Path(__file__).resolve().parent.parent / "config" / "layered.yaml"


@pytest.fixture
async def layered(http_backends) -> AsyncIterator[Daemon]:
    web = await http_backends(2, prefix="web")
    sockets = {name: bind_socket(Address("127.0.0.1", 0)) for name in ("front", "l7-a", "l7-b")}
    ports = {name: s.getsockname()[1] for name, s in sockets.items()}
    text = LAYERED.read_text()
    for old, new in (
        ("127.0.0.1:8080", ports["front"]),
        ("127.0.0.1:8081", ports["l7-a"]),
        ("127.0.0.1:8082", ports["l7-b"]),
        ("127.0.0.1:9001", web[0]),
        ("127.0.0.1:9002", web[1]),
    ):
        assert old in text, f"{LAYERED.name} no longer mentions {old}"
        text = text.replace(old, f"127.0.0.1:{new}")
    daemon = Daemon(load_config_text(text, str(LAYERED)), sockets={name: [s] for name, s in sockets.items()})
    await daemon.start()
    try:
        yield daemon
    finally:
        async with asyncio.timeout(15):
            await daemon.shutdown()
        for s in sockets.values():
            s.close()


async def request_from(daemon: Daemon, source: str) -> tuple[Connection, dict[str, str]]:
    """A keep-alive GET through the front from ``source``; returns the open connection and the
    headers the web backend received."""
    reader, writer = await open_from(*daemon.listener_address("front"), source)
    conn = Connection(reader, writer)
    response = await conn.request("GET", "/layered")
    assert response.status == 200, response.body
    return conn, {k.lower(): v for k, v in response.json()["headers"]}


async def test_web_backends_see_the_real_client_through_both_tiers(layered: Daemon) -> None:
    conns = []
    try:
        for source in ("127.0.0.13", "127.0.0.14"):
            conn, headers = await request_from(layered, source)
            conns.append(conn)
            assert headers["x-forwarded-for"] == source
        # least_connections with both connections held: one on each http listener.
        assert layered.listeners["l7-a"].stats.connections_total == 1
        assert layered.listeners["l7-b"].stats.connections_total == 1
    finally:
        for conn in conns:
            await conn.close()


async def test_http_tier_refuses_connections_that_bypass_the_tcp_tier(layered: Daemon) -> None:
    reader, writer = await open_from(*layered.listener_address("l7-a"), "127.0.0.1")
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await closed_without_data(reader, timeout=2)
    await close_writer(writer)
    reader, writer = await open_from(*layered.listener_address("l7-b"), "127.0.0.2")  # untrusted
    assert await closed_without_data(reader, timeout=2)
    await close_writer(writer)


async def test_a_stopped_http_listener_is_skipped_by_the_tcp_tier(layered: Daemon) -> None:
    layered.listeners["l7-a"].stop_accepting()
    for i in range(4):
        conn, headers = await request_from(layered, f"127.0.0.{20 + i}")
        await conn.close()
        assert headers["x-forwarded-for"] == f"127.0.0.{20 + i}"
    assert layered.listeners["l7-b"].stats.connections_total == 4
    tier = layered.pools["l7-tier"].backends
    assert tier[0].failures_total >= 1
    await eventually(lambda: all(b.active == 0 for b in tier), what="the tcp tier to release")

"""lbproxy.net.connect.Dial against real loopback sockets: its callback gets an open connection
or an error, never a connection that is already gone."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from lbproxy.errors import ConnectRefused, UpstreamError, UpstreamReset
from lbproxy.net.connect import Dial
from tests.client import Connection
from tests.conftest import unused_port


class Recorder(asyncio.Protocol):
    def __init__(self, close_at_once: bool = False) -> None:
        self.close_at_once = close_at_once
        self.transport: asyncio.BaseTransport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.close_at_once:
            transport.abort()  # as when the peer's reset is read before the dial completes

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def dial(port: int, protocol: Recorder) -> tuple[Recorder | None, UpstreamError | None]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[Recorder | None, UpstreamError | None]] = loop.create_future()
    Dial(loop, "127.0.0.1", port, lambda: protocol, 2.0, lambda p, e: done.set_result((p, e)))
    return await asyncio.wait_for(done, 5)


@pytest.fixture
def listening() -> Iterator[int]:
    """A port that completes handshakes (the kernel's accept queue) and never accepts."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


async def test_an_open_connection_is_handed_over(listening: int) -> None:
    protocol, error = await dial(listening, Recorder())
    assert error is None and protocol is not None
    assert protocol.transport is not None and not protocol.transport.is_closing()
    protocol.transport.close()


async def test_a_connection_gone_before_the_callback_is_a_reset(listening: int) -> None:
    protocol = Recorder(close_at_once=True)
    handed, error = await dial(listening, protocol)
    assert handed is None, "a closed connection must not be handed over as connected"
    assert isinstance(error, UpstreamReset) and error.kind == "reset"


async def test_refused_is_connect_refused() -> None:
    protocol, error = await dial(unused_port(), Recorder())
    assert protocol is None and isinstance(error, ConnectRefused)


@pytest.fixture
def resetting() -> Iterator[int]:
    """A backend that accepts each connection and resets it at once, before any byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    server.close()


async def test_http_requests_never_wait_on_a_backend_that_resets_new_connections(
    make_daemon, http_backends, resetting: int
) -> None:
    """Every request, a POST too (nothing of it was sent), goes to the healthy backend at once,
    never waiting on the dead connection (a reset read before the dial completes is the case
    ``test_a_connection_gone_before_the_callback_is_a_reset`` pins down)."""
    live = await http_backends(1)
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{resetting}", "127.0.0.1:{live[0]}"]
            outlier_detection: false
            response_timeout: 3s
            max_idle_connections: 0
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """
    )
    conn = await Connection.open(*daemon.listener_address("public"))
    loop = asyncio.get_running_loop()
    for method in ("GET", "POST") * 10:
        started = loop.time()
        r = await conn.request(method, "/", body=b"x" if method == "POST" else None)
        assert r.status == 200, (method, r.status, r.body)
        assert loop.time() - started < 1.0
    await conn.close()


class _Session:
    """The two attributes of TcpSession that TcpUpstream.connection_lost looks at."""

    def __init__(self) -> None:
        self.connecting: object | None = None
        self.lost: list[Exception | None] = []

    def upstream_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


def test_l4_upstream_lost_while_dialing_is_left_to_the_dial() -> None:
    from lbproxy.l4.splicer import TcpUpstream

    session = _Session()
    upstream = TcpUpstream(session)  # type: ignore[arg-type]
    session.connecting = upstream
    upstream.connection_lost(ConnectionResetError())
    assert session.lost == [], "the Dial reports it and the session tries the next backend"
    session.connecting = None  # dialed and attached: a loss ends the session as before
    upstream.connection_lost(None)
    assert session.lost == [None]

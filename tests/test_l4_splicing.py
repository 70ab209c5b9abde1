"""The tcp listener's data path: connect timeout and bounded failover, resets, half-close from the
backend, idle timeout, listener limits, integrity in both directions at once, and no leaks."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lbproxy.l4.splice import splice_supported
from lbproxy.l4.splicer import TcpSession
from tests.conftest import unused_port
from tests.l4_support import (
    SPLICE,
    Recorder,
    close_writer,
    closed_without_data,
    eventually,
    open_from,
    recording_backend,  # noqa: F401 (fixture)
    tcp_yaml,
)


@pytest.fixture(autouse=True, params=["transports", "splice"])
def relay(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs with the Protocol relay and with ``splice: true`` (Linux)."""
    if request.param == "splice" and not splice_supported():
        pytest.skip("splice(2) is Linux-only")
    SPLICE["on"] = request.param == "splice"
    try:
        yield request.param
    finally:
        SPLICE["on"] = False


@contextmanager
def blackhole() -> Iterator[int]:
    """A port whose SYNs are dropped (a listener with a full accept queue): connects hang."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", port))
        except (TimeoutError, OSError):
            pass
        else:  # pragma: no cover - depends on the kernel
            raise AssertionError("the blackhole accepted a connection; cannot test connect timeouts")
        finally:
            probe.close()
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_connect_timeout_fails_over_to_the_next_backend(make_daemon, tcp_backends) -> None:
    live = await tcp_backends(1)
    with blackhole() as hole:
        daemon = await make_daemon(tcp_yaml([hole, live[0]], pool="connect_timeout: 200ms"))
        host, port = daemon.listener_address("raw")
        reader, writer = await open_from(host, port)
        started = time.monotonic()
        async with asyncio.timeout(5):
            assert await reader.readline() == b"hello from t1\n"
        elapsed = time.monotonic() - started
        await close_writer(writer)
    assert 0.15 < elapsed < 2.0, f"failover took {elapsed:.2f}s with a 200ms connect timeout"
    dead = daemon.pools["echo"].backends[0]
    assert dead.failures_total == 1 and dead.active == 0


async def test_failover_is_bounded_by_retries(make_daemon, tcp_backends) -> None:
    live = await tcp_backends(1)
    dead = [unused_port() for _ in range(4)]
    daemon = await make_daemon(
        tcp_yaml([*dead, live[0]], pool="retries: 2\noutlier_detection: false")
    )
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    assert await closed_without_data(reader), "gave up after 3 attempts: the client must be closed"
    await close_writer(writer)
    backends = daemon.pools["echo"].backends
    assert [b.failures_total for b in backends] == [1, 1, 1, 0, 0]
    assert all(b.active == 0 for b in backends)
    assert daemon.pools["echo"].retries_total == 2, "3 attempts: 2 retries, none counted for the give-up"


async def test_client_reset_resets_the_backend_connection(make_daemon, recording_backend) -> None:
    backend_port, seen = await recording_backend(b"hi\n")
    daemon = await make_daemon(tcp_yaml([backend_port]))
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    async with asyncio.timeout(5):
        assert await reader.readline() == b"hi\n"
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()  # RST
    async with asyncio.timeout(2):
        exc = await seen[0].lost
    assert isinstance(exc, ConnectionResetError), "the backend must see a reset, not an end of stream"
    assert not seen[0].eof
    await eventually(lambda: not daemon.listeners["raw"].connections, what="session cleanup")
    assert daemon.pools["echo"].backends[0].active == 0


async def test_backend_reset_resets_the_client(make_daemon, recording_backend) -> None:
    backend_port, seen = await recording_backend(b"hi\n")
    daemon = await make_daemon(tcp_yaml([backend_port]))
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    async with asyncio.timeout(5):
        assert await reader.readline() == b"hi\n"
    backend_transport = seen[0].transport
    assert backend_transport is not None
    backend_transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
    )
    backend_transport.abort()
    started = time.monotonic()
    try:
        async with asyncio.timeout(2):
            data = await reader.read()
    except ConnectionResetError:
        data = None
    assert data is None, f"expected a reset, got {data!r}"
    assert time.monotonic() - started < 1.0
    await close_writer(writer)


async def test_backend_half_close_keeps_the_client_direction_open(make_daemon, recording_backend) -> None:
    """The backend sends its part then EOF; the client reads EOF and can still send."""

    class SaysByeFirst(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            assert self.transport is not None
            self.transport.write(b"bye")
            self.transport.write_eof()

        def eof_received(self) -> bool:
            self.eof = True
            return False  # close once the client is done too

    backend_port, seen = await recording_backend(cls=SaysByeFirst)
    daemon = await make_daemon(tcp_yaml([backend_port]))
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    async with asyncio.timeout(5):
        assert await reader.read() == b"bye"  # then EOF
    writer.write(b"still here")
    await eventually(lambda: bytes(seen[0].data) == b"still here", what="data after the backend's EOF")
    writer.write_eof()
    async with asyncio.timeout(5):
        assert await seen[0].lost is None
    await eventually(lambda: not daemon.listeners["raw"].connections, what="session cleanup")
    await close_writer(writer)


async def test_idle_timeout_closes_both_sides_but_not_busy_ones(make_daemon, recording_backend) -> None:
    backend_port, seen = await recording_backend(b"hi\n")
    daemon = await make_daemon(tcp_yaml([backend_port], listener="idle_timeout: 300ms"))
    host, port = daemon.listener_address("raw")
    quiet_reader, quiet_writer = await open_from(host, port)
    busy_reader, busy_writer = await open_from(host, port)
    async with asyncio.timeout(5):
        assert await quiet_reader.readline() == b"hi\n"
        assert await busy_reader.readline() == b"hi\n"
    quiet_backend, busy_backend = seen
    started = time.monotonic()
    for _ in range(8):  # 800 ms of traffic, a byte every 100 ms
        busy_writer.write(b".")
        await asyncio.sleep(0.1)
    assert await closed_without_data(quiet_reader, timeout=2)
    assert time.monotonic() - started < 1.5
    await eventually(quiet_backend.lost.done, timeout=1, what="the idle connection's backend side to close")
    assert not busy_backend.lost.done(), "a connection with traffic was closed as idle"
    assert bytes(busy_backend.data) == b"." * 8
    await close_writer(quiet_writer)
    await close_writer(busy_writer)


async def test_listener_max_connections_refuses_beyond_the_limit(make_daemon, tcp_backends) -> None:
    ports = await tcp_backends(1)
    daemon = await make_daemon(tcp_yaml(ports, listener="max_connections: 2"))
    host, port = daemon.listener_address("raw")
    held = []
    for _ in range(2):
        reader, writer = await open_from(host, port)
        async with asyncio.timeout(5):
            assert await reader.readline() == b"hello from t1\n"
        held.append(writer)
    reader, writer = await open_from(host, port)
    assert await closed_without_data(reader), "a third connection must be refused"
    await close_writer(writer)
    listener = daemon.listeners["raw"]
    assert listener.stats.rejected_total == 1
    await close_writer(held.pop())
    await eventually(lambda: len(listener.connections) == 1, what="a slot to free up")
    reader, writer = await open_from(host, port)
    async with asyncio.timeout(5):
        assert await reader.readline() == b"hello from t1\n"
    held.append(writer)
    for writer in held:
        await close_writer(writer)


async def test_both_directions_at_once_arrive_intact(make_daemon, tcp_backends) -> None:
    """16 MiB up while the echo comes back down, concurrently: same bytes, same order."""
    ports = await tcp_backends(1, greet=False)
    daemon = await make_daemon(tcp_yaml(ports))
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    blocks = [hashlib.sha256(i.to_bytes(4, "big")).digest() * 2048 for i in range(256)]  # 64 KiB each
    sent = hashlib.sha256()
    for block in blocks:
        sent.update(block)
    total = sum(len(b) for b in blocks)

    async def upload() -> None:
        for block in blocks:
            writer.write(block)
            await writer.drain()
        writer.write_eof()

    async def download() -> tuple[int, str]:
        got = hashlib.sha256()
        count = 0
        while True:
            data = await reader.read(1 << 18)
            if not data:
                return count, got.hexdigest()
            got.update(data)
            count += len(data)

    async with asyncio.timeout(30):
        _, (count, digest) = await asyncio.gather(upload(), download())
    assert count == total
    assert digest == sent.hexdigest()
    await close_writer(writer)


async def test_no_leaks_after_mixed_outcomes(make_daemon, tcp_backends, servers) -> None:
    """Successes, refused connects and resets all leave no session and no backend count behind."""
    live = await tcp_backends(2)
    daemon = await make_daemon(tcp_yaml([live[0], unused_port(), live[1]], pool="outlier_detection: false"))
    host, port = daemon.listener_address("raw")
    for i in range(30):
        reader, writer = await open_from(host, port)
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"hello from t")
        if i % 3 == 0:
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            writer.transport.abort()
        else:
            await close_writer(writer)
    listener = daemon.listeners["raw"]
    await eventually(lambda: not listener.connections, what="every session to end")
    assert [b.active for b in daemon.pools["echo"].backends] == [0, 0, 0]
    assert listener.stats.connections_total == 30


async def test_session_repr_shows_live_state(make_daemon, tcp_backends) -> None:
    ports = await tcp_backends(1)
    daemon = await make_daemon(tcp_yaml(ports))
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    async with asyncio.timeout(5):
        await reader.readline()
    (session,) = daemon.listeners["raw"].connections
    assert isinstance(session, TcpSession)
    assert "127.0.0.1" in repr(session) and f":{ports[0]}" in repr(session)
    await close_writer(writer)

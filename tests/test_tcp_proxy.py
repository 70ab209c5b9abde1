"""The tcp listener end to end: splicing, half-close, backpressure, failover, limits."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

from lbproxy.l4.splicer import TcpSession
from tests.conftest import unused_port
from tests.l4_support import Firehose


def tcp_config(ports: list[int], strategy: str = "round_robin", extra: str = "") -> str:
    backends = "\n".join(f"          - address: 127.0.0.1:{p}" for p in ports)
    return f"""
    pools:
      echo:
        strategy: {strategy}
        backends:
{backends}
    listeners:
      - name: raw
        bind: 127.0.0.1:0
        mode: tcp
        pool: echo
{extra}
    """


async def test_echo_through_tcp_listener_rotates(make_daemon, tcp_backends) -> None:
    ports = await tcp_backends(3)
    daemon = await make_daemon(tcp_config(ports))
    host, port = daemon.listener_address("raw")
    greetings = []
    for _ in range(6):
        reader, writer = await asyncio.open_connection(host, port)
        async with asyncio.timeout(5):
            greetings.append((await reader.readline()).decode().strip())
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
        writer.close()
        await writer.wait_closed()
    assert Counter(greetings) == {"hello from t1": 2, "hello from t2": 2, "hello from t3": 2}


async def test_half_close_still_gets_the_whole_response(make_daemon, servers) -> None:
    """A client that shuts down its write side still receives everything the backend sends."""

    class SlowReply(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.received = bytearray()

        def data_received(self, data: bytes) -> None:
            self.received += data

        def eof_received(self) -> bool:
            # Answer only after the client's EOF arrives, in several pieces, then close.
            loop = asyncio.get_running_loop()
            payload = bytes(self.received) * 1000
            for i in range(5):
                loop.call_later(0.02 * i, self.transport.write, payload)
            loop.call_later(0.15, self.transport.close)
            return True

    server = await servers(SlowReply)
    daemon = await make_daemon(tcp_config([server.sockets[0].getsockname()[1]]))
    host, port = daemon.listener_address("raw")
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"abc")
    writer.write_eof()
    async with asyncio.timeout(5):
        data = await reader.read()  # until EOF
    assert data == b"abc" * 1000 * 5
    writer.close()


async def test_backpressure_bounds_memory(make_daemon, servers) -> None:
    """A client that doesn't read pauses the backend; the proxy never buffers the whole stream."""
    total = 64 * 1024 * 1024
    server = await servers(lambda: Firehose(total))
    daemon = await make_daemon(tcp_config([server.sockets[0].getsockname()[1]]))
    host, port = daemon.listener_address("raw")
    sock = socket.create_connection((host, port))
    sock.setblocking(False)
    await asyncio.sleep(0.5)  # client reads nothing: buffers must stop filling
    (session,) = daemon.listeners["raw"].connections
    assert isinstance(session, TcpSession)
    assert session.transport is not None
    buffered = session.transport.get_write_buffer_size()
    assert buffered < 4 * 1024 * 1024, f"proxy buffered {buffered} bytes for a stalled client"
    loop = asyncio.get_running_loop()
    received = 0
    async with asyncio.timeout(30):
        while True:
            data = await loop.sock_recv(sock, 1 << 20)
            if not data:
                break
            received += len(data)
    sock.close()
    assert received == total


async def test_dead_backend_is_skipped_on_connect_failure(make_daemon, tcp_backends) -> None:
    live = await tcp_backends(1)
    dead = unused_port()
    daemon = await make_daemon(tcp_config([dead, live[0]]))
    host, port = daemon.listener_address("raw")
    for _ in range(4):
        reader, writer = await asyncio.open_connection(host, port)
        async with asyncio.timeout(5):
            assert await reader.readline() == b"hello from t1\n"
        writer.close()
        await writer.wait_closed()


async def test_no_backend_closes_at_once(make_daemon) -> None:
    daemon = await make_daemon(tcp_config([unused_port()]))
    host, port = daemon.listener_address("raw")
    reader, writer = await asyncio.open_connection(host, port)
    async with asyncio.timeout(5):
        try:
            data = await reader.read()
        except ConnectionResetError:
            data = b""
    assert data == b""
    writer.close()


async def test_ipv6_listener_and_backend(make_daemon, servers) -> None:
    from lbproxy.demo.backends import EchoTcpProtocol

    server = await servers(lambda: EchoTcpProtocol("v6"), host="::1")
    port6 = server.sockets[0].getsockname()[1]
    daemon = await make_daemon(
        f"""
        pools:
          echo:
            backends: ["[::1]:{port6}"]
        listeners:
          - name: raw
            bind: "[::1]:0"
            mode: tcp
            pool: echo
        """
    )
    host, port = daemon.listener_address("raw")
    assert host == "::1"
    reader, writer = await asyncio.open_connection(host, port)
    async with asyncio.timeout(5):
        assert await reader.readline() == b"hello from v6\n"
    writer.close()
    await writer.wait_closed()

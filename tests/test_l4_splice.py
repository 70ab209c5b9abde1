"""``splice: true`` on tcp listeners: the relay moves to pipes (splice(2)) and behaves as before.

test_l4_splicing.py runs every data-path test of the tcp listener with and without splice; these
check what only the splice relay has: its pipes exist while a connection lives and are gone after,
backpressure holds with bytes parked in the kernel, counts and logs, shutdown, and the daemon
process (uvloop) relaying a bulk stream intact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from lbproxy.l4.splice import PIPE_SIZE, splice_supported
from lbproxy.l4.splicer import TcpSession
from tests.l4_support import Firehose, close_writer, eventually, open_from, recording_backend, tcp_yaml  # noqa: F401
from tests.lbproxy_process import LbProcess

pytestmark = pytest.mark.skipif(not splice_supported(), reason="splice(2) is Linux-only")


def pipes(pid: int | str = "self") -> int:
    """How many pipe descriptors process ``pid`` holds."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                count += 1
        except OSError:
            pass
    return count


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def exchange_both_ways(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, megabytes: int) -> None:
    """Send ``megabytes`` MiB to an echo peer while reading them back; same bytes, same order."""
    blocks = [hashlib.sha256(i.to_bytes(4, "big")).digest() * 2048 for i in range(megabytes * 16)]
    sent = hashlib.sha256(b"".join(blocks)).hexdigest()

    async def upload() -> None:
        for block in blocks:
            writer.write(block)
            await writer.drain()
        writer.write_eof()

    async def download() -> str:
        got = hashlib.sha256()
        while data := await reader.read(1 << 18):
            got.update(data)
        return got.hexdigest()

    async with asyncio.timeout(30):
        _, digest = await asyncio.gather(upload(), download())
    assert digest == sent


async def test_spliced_connection_uses_pipes_and_leaves_nothing_behind(make_daemon, tcp_backends) -> None:
    (port,) = await tcp_backends(1, greet=False)
    daemon = await make_daemon(tcp_yaml([port], listener="splice: true"))
    listener = daemon.listeners["raw"]
    host, lport = daemon.listener_address("raw")
    fds_before, pipes_before = open_fds(), pipes()
    reader, writer = await open_from(host, lport)
    writer.write(b"x")
    async with asyncio.timeout(5):
        assert await reader.readexactly(1) == b"x"
    (session,) = listener.connections
    assert isinstance(session, TcpSession) and session.splice is not None, "the relay did not move to splice"
    assert pipes() == pipes_before + 4, "one pipe (two descriptors) per direction"
    await exchange_both_ways(reader, writer, 8)
    await close_writer(writer)
    await eventually(lambda: not listener.connections, what="the session to end")
    await eventually(lambda: open_fds() <= fds_before and pipes() == pipes_before, what="descriptors released")
    assert daemon.pools["echo"].backends[0].active == 0
    size = 1 + 8 * 1024 * 1024
    assert listener.stats.bytes_in == size and listener.stats.bytes_out == size


async def test_backpressure_parks_bytes_in_the_kernel_not_in_the_proxy(make_daemon, servers) -> None:
    """A client that doesn't read stops the backend: the pump holds at most one pipe per direction."""
    total = 64 * 1024 * 1024
    firehoses: list[Firehose] = []
    server = await servers(lambda: Firehose(total, firehoses))
    daemon = await make_daemon(tcp_yaml([server.sockets[0].getsockname()[1]], listener="splice: true"))
    host, port = daemon.listener_address("raw")
    sock = socket.create_connection((host, port))
    sock.setblocking(False)
    await asyncio.sleep(0.5)  # the client reads nothing
    (session,) = daemon.listeners["raw"].connections
    assert isinstance(session, TcpSession) and session.splice is not None
    assert session.splice.down.in_pipe <= PIPE_SIZE
    (firehose,) = firehoses
    assert firehose.sent < total // 2, f"the backend pushed {firehose.sent} bytes to a client that reads nothing"
    loop = asyncio.get_running_loop()
    received = 0
    async with asyncio.timeout(30):
        while data := await loop.sock_recv(sock, 1 << 20):
            received += len(data)
    sock.close()
    assert received == total


async def test_access_log_and_proxy_header_on_a_spliced_connection(make_daemon, recording_backend, tmp_path) -> None:
    backend_port, seen = await recording_backend(b"hello\n")
    log_path = tmp_path / "access.log"
    daemon = await make_daemon(
        f"access_log: {{format: json, path: {log_path}}}\n"
        + tcp_yaml([backend_port], pool="proxy_protocol: v1", listener="splice: true")
    )
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    async with asyncio.timeout(5):
        assert await reader.readline() == b"hello\n"
    (session,) = daemon.listeners["raw"].connections
    assert isinstance(session, TcpSession) and session.splice is not None
    writer.write(b"abc")
    await eventually(lambda: bytes(seen[0].data).endswith(b"abc"), what="the client's bytes at the backend")
    data = bytes(seen[0].data)
    assert data.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ") and data.endswith(b"\r\nabc")
    await close_writer(writer)
    assert seen[0].transport is not None
    seen[0].transport.close()  # the backend's end too (it keeps a half-closed connection open)
    await eventually(lambda: not daemon.listeners["raw"].connections, what="the session to end")
    assert daemon.access_log is not None
    daemon.access_log.stream.flush()
    (line,) = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert (line["bytes_in"], line["bytes_out"], line["termination"]) == (3, 6, None), line


async def test_shutdown_resets_spliced_connections(make_daemon, tcp_backends) -> None:
    (port,) = await tcp_backends(1, greet=False)
    daemon = await make_daemon("drain_timeout: 300ms\n" + tcp_yaml([port], listener="splice: true"))
    host, lport = daemon.listener_address("raw")
    reader, writer = await open_from(host, lport)
    writer.write(b"x")
    async with asyncio.timeout(5):
        assert await reader.readexactly(1) == b"x"
    async with asyncio.timeout(5):
        await daemon.shutdown()  # tcp connections run until drain_timeout, then are reset
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        async with asyncio.timeout(5):
            await reader.readexactly(1)
    writer.close()


async def test_daemon_process_splices_a_bulk_stream(tmp_path: Path, tcp_backends) -> None:
    """The real daemon (uvloop): 32 MiB each way through a splice listener, with its pipes seen
    in /proc while the connection lives."""
    (port,) = await tcp_backends(1, greet=False)
    config = tmp_path / "lbproxy.yaml"
    config.write_text(tcp_yaml([port], listener="splice: true"))
    process = await LbProcess.start(config)
    try:
        host, lport = process.address("raw")
        pid = process.proc.pid
        pipes_before = pipes(pid)
        reader, writer = await open_from(host, lport)
        writer.write(b"x")
        async with asyncio.timeout(5):
            assert await reader.readexactly(1) == b"x"
        assert pipes(pid) == pipes_before + 4, "lbproxy did not splice the connection"
        await exchange_both_ways(reader, writer, 32)
        await close_writer(writer)
        await eventually(lambda: pipes(pid) == pipes_before, what="the pipes to be closed")
    finally:
        await process.stop()
    assert sys.platform.startswith("linux")

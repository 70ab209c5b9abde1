"""Helpers for the L4 and PROXY protocol tests: config text, small clients, real peer processes.

Every wait is bounded. Peer processes (nginx, haproxy) run in the foreground, are started by the
test and killed by PID at the end; a missing binary fails the test (``.ci/run`` installs them).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


SPLICE = {"on": False}
"""``tcp_yaml`` adds ``splice: true`` to its listener while ``SPLICE["on"]`` (the ``relay``
fixture of a test module runs its tests both ways)."""


def tcp_yaml(
    ports: list[int],
    *,
    strategy: str = "round_robin",
    pool: str = "",
    backend: str = "",
    listener: str = "",
) -> str:
    """Config text: pool ``echo`` over 127.0.0.1:ports and tcp listener ``raw`` on port 0.

    ``pool``, ``backend`` and ``listener`` are extra YAML lines (``key: value``, may contain
    ``\\n``) added to the pool, to every backend and to the listener.
    """

    def block(text: str, indent: int) -> str:
        return "".join(f"\n{' ' * indent}{line}" for line in text.splitlines() if line.strip())

    if SPLICE["on"]:
        listener = f"splice: true\n{listener}"
    backends = "".join(f"\n      - address: 127.0.0.1:{p}{block(backend, 8)}" for p in ports)
    return (
        f"pools:\n  echo:\n    strategy: {strategy}{block(pool, 4)}\n    backends:{backends}\n"
        f"listeners:\n  - name: raw\n    bind: 127.0.0.1:0\n    mode: tcp\n    pool: echo{block(listener, 4)}\n"
    )


async def open_from(
    host: str, port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``host:port`` from loopback address ``source`` (127.0.0.X are distinct)."""
    async with asyncio.timeout(5):
        return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(5):
            await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


async def greeting(host: str, port: int, source: str = "127.0.0.1", header: bytes = b"") -> str:
    """Which echo backend (``t1``, ``t2`` ...) a new connection from ``source`` reaches.

    ``header`` is sent first (a PROXY header). Returns '' when the proxy closes without one.
    """
    reader, writer = await open_from(host, port, source)
    try:
        if header:
            writer.write(header)
        async with asyncio.timeout(5):
            try:
                line = await reader.readline()
            except ConnectionResetError:
                line = b""
        return line.decode().strip().removeprefix("hello from ")
    finally:
        await close_writer(writer)


async def closed_without_data(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the peer closes (EOF or reset) within ``timeout`` without sending a byte."""
    try:
        async with asyncio.timeout(timeout):
            data = await reader.read(1)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return data == b""


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


class Recorder(asyncio.Protocol):
    """A backend that records what it receives, and how the connection ended.

    It never closes on its own: a half-close from the proxy leaves it open, so ``lost`` resolves
    only when the proxy really closes or resets the connection.
    """

    def __init__(self, sink: list[Recorder], greeting: bytes = b"") -> None:
        sink.append(self)
        self.greeting = greeting
        self.data = bytearray()
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.greeting:
            self.transport.write(self.greeting)

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


RecordingBackend = Callable[..., Awaitable[tuple[int, list[Recorder]]]]


@pytest.fixture
async def recording_backend(servers) -> AsyncIterator[RecordingBackend]:  # type: ignore[no-untyped-def]
    """``port, seen = await recording_backend(greeting=b"", cls=Recorder)``: a server whose
    connections append a ``cls`` instance to ``seen``; every connection is closed at the end."""
    made: list[Recorder] = []

    async def factory(greeting: bytes = b"", cls: type[Recorder] = Recorder) -> tuple[int, list[Recorder]]:
        seen: list[Recorder] = []

        def protocol() -> Recorder:
            recorder = cls(seen, greeting)
            made.append(recorder)
            return recorder

        server = await servers(protocol)
        return int(server.sockets[0].getsockname()[1]), seen

    yield factory
    for recorder in made:
        if recorder.transport is not None:
            recorder.transport.abort()


# -- real peers -----------------------------------------------------------------------------------


def require_binary(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.fail(f"{name} is required (installed by .ci/run)")
    return path


def free_port() -> int:
    """A loopback port nothing listens on right now (for peers that must bind it themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_accepting(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    """Poll-connect to 127.0.0.1:port until it accepts; fail with the peer's log if it dies first
    or doesn't accept within ``timeout``. Blocking (peers start in well under a second)."""
    deadline = time.monotonic() + timeout
    while not _accepts(port):
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            pytest.fail(f"{proc.args[0]} not accepting on {port} after {timeout}s: {_tail(log)}")
        time.sleep(0.02)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


@contextmanager
def peer_process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` in the foreground (output to ``log``); killed by PID on exit."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def nginx_echo_conf(tmp: Path, port: int) -> Path:
    """nginx (http module only) answering ``$proxy_protocol_addr:$proxy_protocol_port`` on ``port``.

    Single process (``master_process off``), every path under ``tmp``.
    """
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""
master_process off;
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "$proxy_protocol_addr:$proxy_protocol_port\\n"; }}
    }}
}}
"""
    )
    return conf

def haproxy_tcp_conf(tmp: Path, port: int, server_port: int, send: str) -> Path:
    """haproxy (``mode tcp``) on ``port`` forwarding to 127.0.0.1:server_port with ``send``
    (``send-proxy`` or ``send-proxy-v2``)."""
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server lb 127.0.0.1:{server_port} {send}
"""
    )
    return conf


@contextmanager
def nginx_echo(tmp: Path) -> Iterator[int]:
    """A running nginx that answers ``$proxy_protocol_addr:$proxy_protocol_port``; yields its port."""
    nginx = require_binary("nginx")
    port = free_port()
    conf = nginx_echo_conf(tmp, port)
    log = tmp / "nginx.out"
    with peer_process([nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)], log) as proc:
        wait_accepting(port, proc, tmp / "error.log")
        yield port


@contextmanager
def haproxy_in_front(tmp: Path, server_port: int, send: str) -> Iterator[int]:
    """A running haproxy forwarding to ``server_port`` with PROXY ``send``; yields its port."""
    haproxy = require_binary("haproxy")
    port = free_port()
    conf = haproxy_tcp_conf(tmp, port, server_port, send)
    log = tmp / "haproxy.out"
    with peer_process([haproxy, "-f", str(conf), "-db"], log) as proc:
        wait_accepting(port, proc, log)
        yield port


class Firehose(asyncio.Protocol):
    """A backend that pushes ``total`` bytes as fast as its transport lets it, then sends EOF;
    ``sent`` is how much it has handed to its transport so far (backpressure tests)."""

    CHUNK = b"z" * (256 * 1024)

    def __init__(self, total: int, made: list[Firehose] | None = None) -> None:
        self.total = total
        self.sent = 0
        self.paused = False
        self.transport: asyncio.Transport | None = None
        if made is not None:
            made.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pump()

    def pump(self) -> None:
        assert self.transport is not None
        while not self.paused and self.sent < self.total:
            self.transport.write(self.CHUNK)
            self.sent += len(self.CHUNK)
        if self.sent >= self.total:
            self.transport.write_eof()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

"""Scripted HTTP backends for the L7 tests: real servers on 127.0.0.1:0 that answer each request
with a test-supplied coroutine, so a test can misbehave on purpose (be slow, frame wrongly, close
early, reset, upgrade) and see exactly what lbproxy sent (raw bytes, parsed requests).

Also a fast byte sink/source (``BulkBackend``) for the large-transfer tests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest


@dataclass
class Request:
    """One request as the backend parsed it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    keep_alive: bool = True

    def header(self, name: str) -> str | None:
        """The value of the last field called ``name`` (case-insensitive), or None."""
        found = None
        for n, v in self.headers:
            if n.lower() == name.lower():
                found = v
        return found

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self) -> list[str]:
        return [n.lower() for n, _ in self.headers]


class BackendConnection:
    """One connection accepted by a ScriptedBackend."""

    def __init__(self, backend: ScriptedBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.backend = backend
        self.reader = reader
        self.writer = writer
        self.parser = httptools.HttpRequestParser(self)
        self.ready: deque[Request] = deque()
        self.raw = bytearray()
        self.upgraded = False
        self.tunnel_rest = b""
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.ready.append(
            Request(
                self.parser.get_method().decode(),
                self._url.decode("latin-1"),
                self.parser.get_http_version(),
                self._headers,
                bytes(self._body),
                self.parser.should_keep_alive(),
            )
        )

    async def read_request(self, timeout: float = 10.0) -> Request | None:
        """The next complete request, or None at EOF, on an upgrade or on a parse error."""
        async with asyncio.timeout(timeout):
            while not self.ready:
                if self.upgraded:
                    return None
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.raw += data
                self.backend.raw += data
                try:
                    self.parser.feed_data(data)
                except httptools.HttpParserUpgrade as upgrade:
                    self.upgraded = True
                    self.tunnel_rest = data[upgrade.args[0] :]
                except httptools.HttpParserError:
                    self.backend.parse_errors += 1
                    return None
        return self.ready.popleft()

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def reset(self) -> None:
        """Close with a RST (SO_LINGER 0)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[BackendConnection, Request], Awaitable[bool | None]]
"""Answers one request; returns False to end the connection (closed after the handler)."""


async def respond(conn: BackendConnection, request: Request, body: bytes = b"ok", status: int = 200, headers: str = "") -> bool:
    """A plain well-framed response (Content-Length)."""
    conn.write(
        f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + (b"" if request.method == "HEAD" else body)
    )
    await conn.drain()
    return True


@dataclass
class ScriptedBackend:
    """A backend whose every request is answered by ``handler``; counts what it saw."""

    handler: Handler = respond
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    parse_errors: int = 0
    live: set[BackendConnection] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    server: asyncio.AbstractServer | None = None
    port: int = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = BackendConnection(self, reader, writer)
        self.connections += 1
        self.live.add(conn)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while True:
                request = await conn.read_request(timeout=30)
                if request is None:
                    break
                self.requests.append(request)
                if await self.handler(conn, request) is False:
                    break
                if not request.keep_alive:
                    break
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            self.tasks.discard(task)
            self.live.discard(conn)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.live):
            conn.writer.transport.abort()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.server is not None:
                await self.server.wait_closed()


class _BulkProtocol(asyncio.Protocol):
    """Per request: a body (any framing) is counted and answered with the running total;
    ``GET /bytes/N`` streams N zero bytes with flow control."""

    def __init__(self, owner: BulkBackend) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.to_send = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        owner = self.owner
        owner.received += len(body)
        if owner.read_rate:
            # A slow consumer: stop reading until the budget allows what was taken.
            delay = owner.received / owner.read_rate - (time.monotonic() - owner.started)
            if delay > 0.005 and self.transport is not None and not self.transport.is_closing():
                self.transport.pause_reading()
                asyncio.get_running_loop().call_later(delay, self._resume_reading)

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.url.startswith(b"/bytes/"):
            self.to_send = int(self.url.rsplit(b"/", 1)[1])
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.to_send)
            self._send()
        else:
            body = b"%d" % self.owner.received
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def _send(self) -> None:
        assert self.transport is not None
        chunk = _ZEROS
        while self.to_send > 0 and not self.paused:
            n = min(self.to_send, len(chunk))
            self.transport.write(chunk if n == len(chunk) else chunk[:n])
            self.to_send -= n

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._send()


_ZEROS = bytes(1 << 20)


class BulkBackend:
    """A sink (any request body, answered with the byte count; at most ``read_rate`` bytes/s
    when set, counted from ``started``) and a fast source (GET /bytes/N)."""

    def __init__(self, read_rate: float = 0.0) -> None:
        self.received = 0
        self.read_rate = read_rate
        self.started = time.monotonic()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _BulkProtocol(self), "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


# -- shared helpers for the tests/test_http_*.py files ------------------------------------------



@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedBackend]]]:
    """``await scripted(handler)``: a started ScriptedBackend; closed at the end of the test."""
    made: list[ScriptedBackend] = []

    async def factory(handler: Handler = respond) -> ScriptedBackend:
        backend = ScriptedBackend(handler)
        await backend.start()
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        await backend.close()


def proxy_config(
    ports: list[int],
    *,
    pool: dict[str, Any] | None = None,
    listener: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    drain_timeout: float = 1.0,
) -> str:
    """A one-pool, one-listener config (JSON is YAML) for the daemon fixture."""
    config: dict[str, Any] = {
        "drain_timeout": drain_timeout,
        "pools": {"web": {"backends": [f"127.0.0.1:{p}" for p in ports], **(pool or {})}},
        "listeners": [{"name": "public", "bind": "127.0.0.1:0", "routes": [{"pool": "web"}], **(listener or {})}],
    }
    if limits:
        config["listeners"][0]["limits"] = limits
    return json.dumps(config)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the peer sends until it closes (EOF or reset). Raises TimeoutError."""
    data = bytearray()
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await reader.read(65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float = 5.0) -> bytes:
    """Bytes up to and including ``marker``. Raises TimeoutError, or EOFError at EOF before it."""
    data = bytearray()
    async with asyncio.timeout(timeout):
        while marker not in data:
            chunk = await reader.read(65536)
            if not chunk:
                raise EOFError(bytes(data))
            data += chunk
    return bytes(data)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> None:
    """Wait until ``predicate()`` holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)

"""A small real HTTP/1.1 client over asyncio sockets, for tests that need byte-level control."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httptools


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    http_version: str = "1.1"
    keep_alive: bool = True

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Parser:
    responses: list[Response] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    done: bool = False
    parser: Any = None
    head_only: bool = False

    def on_message_begin(self) -> None:
        self.headers = []
        self.body = bytearray()
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.head_only:
            self._finish()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if not self.done:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.responses.append(
            Response(
                self.parser.get_status_code(),
                self.headers,
                bytes(self.body),
                self.parser.get_http_version(),
                self.parser.should_keep_alive(),
            )
        )


class Connection:
    """One client connection; ``request`` sends a request and reads one response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self, head_only: bool = False, timeout: float = 10.0) -> Response:
        state = _Parser(head_only=head_only)
        state.parser = httptools.HttpResponseParser(state)
        async with asyncio.timeout(timeout):
            while not state.responses:
                data = await self.reader.read(65536)
                if not data:
                    if state.headers and not state.done:
                        # close-delimited body
                        state._finish()
                        break
                    raise ConnectionError("connection closed before a response")
                state.parser.feed_data(data)
        return state.responses[0]

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        host: str = "test.local",
        version: str = "1.1",
    ) -> Response:
        lines = [f"{method} {path} HTTP/{version}", f"Host: {host}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        await self.send(raw)
        return await self.read_response(head_only=method == "HEAD")

    async def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (EOF or reset) within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await self.reader.read(65536)
                    if not data:
                        return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def fetch(addr: str, port: int, method: str = "GET", path: str = "/", **kwargs: Any) -> Response:
    """One request on a fresh connection."""
    conn = await Connection.open(addr, port)
    try:
        return await conn.request(method, path, **kwargs)
    finally:
        await conn.close()


class ResponseStream:
    """Reads consecutive responses from one connection with one parser, so pipelined responses
    that arrive in a single read are all kept (``Connection.read_response`` keeps only one)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.state = _Parser()
        self.state.parser = httptools.HttpResponseParser(self.state)

    async def next(self, timeout: float = 10.0) -> Response:
        state = self.state
        async with asyncio.timeout(timeout):
            while not state.responses:
                data = await self.conn.reader.read(65536)
                if not data:
                    if state.headers and not state.done:
                        state._finish()
                        break
                    raise ConnectionError("connection closed before a response")
                state.parser.feed_data(data)
        return state.responses.pop(0)

"""Tiny real servers for the demo (and for tests): an HTTP echo backend and a TCP echo backend.

The HTTP backend answers every request with JSON saying which backend answered and what it
received (method, target, headers, body length), so a newcomer sees the rotation and a test sees
exactly what the proxy forwarded.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Sequence

import httptools


class EchoHttpProtocol(asyncio.Protocol):
    """Answers each request with a JSON description of it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        assert self.transport is not None
        method = self.parser.get_method().decode()
        doc = {
            "backend": self.name,
            "method": method,
            "target": self.url.decode("latin-1"),
            "headers": self.headers,
            "body_bytes": len(self.body),
            "body": self.body[:1024].decode("latin-1"),
        }
        body = (json.dumps(doc) + "\n").encode()
        keep_alive = self.parser.should_keep_alive()
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Backend: {self.name}\r\n{'' if keep_alive else 'Connection: close'+chr(13)+chr(10)}\r\n"
        ).encode()
        self.transport.write(head if method == "HEAD" else head + body)
        if not keep_alive:
            self.transport.close()


class EchoTcpProtocol(asyncio.Protocol):
    """Echoes every byte back, prefixed once with a greeting naming the backend."""

    def __init__(self, name: str, greet: bool = True) -> None:
        self.name = name
        self.greet = greet
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp_transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tcp_transport
        if self.greet:
            tcp_transport.write(f"hello from {self.name}\n".encode())

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close after the echo is flushed


async def start_http_backend(
    name: str, host: str = "127.0.0.1", port: int = 0, backlog: int = 1024
) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: EchoHttpProtocol(name), host, port, backlog=backlog)


async def start_tcp_backend(
    name: str, host: str = "127.0.0.1", port: int = 0, greet: bool = True
) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: EchoTcpProtocol(name, greet), host, port)


def server_port(server: asyncio.AbstractServer) -> int:
    """The port a server started by this module listens on (its first socket)."""
    sockets: Sequence[socket.socket] = getattr(server, "sockets", ())  # asyncio's and uvloop's Server have it
    return int(sockets[0].getsockname()[1])

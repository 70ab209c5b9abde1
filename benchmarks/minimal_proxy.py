"""A minimal uvloop + httptools HTTP/1.1 reverse proxy: the floor a Python proxy starts from.

The performance issue quotes "a minimal uvloop+httptools proxy" next to haproxy and nginx. This is
that reference, so `run.py` can measure it in the same run (system ``minimal``): it shows how much
of lbproxy's CPU per request is the cost of Python, uvloop and httptools themselves and how much
is lbproxy's own work (routing, validation, forwarding headers, re-framing, timers, metrics).

It does only what a keep-alive benchmark needs and nothing a real proxy must: round robin over
the backends, an idle upstream connection per request (dialed when none is idle), the request
head forwarded as parsed, the response bytes relayed verbatim (parsed only to see where it ends).
No validation, no timeouts, no request bodies, no error pages. A request with ``Connection:
close`` is answered with the backend's ``Connection: keep-alive`` turned into ``close`` by a byte
replace, then the client connection is closed (``run.py``'s l7-newconn). Never use it for
anything else.

    python benchmarks/minimal_proxy.py PORT BACKEND_PORT [BACKEND_PORT ...]
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """A keep-alive connection to one backend; relays one response at a time to ``client``."""

    def __init__(self, idle: list[Upstream]) -> None:
        self.idle = idle
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            return
        if client.close_after:
            client.transport.write(data.replace(b"\r\nConnection: keep-alive\r\n", b"\r\nConnection: close\r\n", 1))
        else:
            client.transport.write(data)
        self.parser.feed_data(data)  # as received: the upstream connection stays keep-alive
        if self.done:
            self.done = False
            self.client = None
            self.idle.append(self)
            client.response_done()

    def on_message_complete(self) -> None:
        self.done = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.idle:
            self.idle.remove(self)
        if self.client is not None:
            self.client.transport.abort()


class Client(asyncio.Protocol):
    """One client connection: parse a request, forward its head, wait for the response."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.url = b""
        self.parts: list[bytes] = []
        self.pending: list[bytes] = []  # request heads waiting (pipelined)
        self.busy = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
            return
        if self.pending and not self.busy:
            self.send(self.pending.pop(0))

    def on_message_begin(self) -> None:
        self.url = b""
        self.parts = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != b"connection":  # the upstream connection stays keep-alive
            self.parts += (name, b": ", value, b"\r\n")

    def on_message_complete(self) -> None:
        self.close_after = not self.parser.should_keep_alive()
        method = self.parser.get_method()
        self.pending.append(b"".join([method, b" ", self.url, b" HTTP/1.1\r\n", *self.parts, b"\r\n"]))

    def send(self, head: bytes) -> None:
        self.busy = True
        proxy = self.proxy
        port = proxy.ports[proxy.next]
        proxy.next = (proxy.next + 1) % len(proxy.ports)
        idle = proxy.idle[port]
        if idle:
            upstream = idle.pop()
            upstream.client = self
            upstream.transport.write(head)  # type: ignore[union-attr]
        else:
            asyncio.ensure_future(self.dial(port, head))

    async def dial(self, port: int, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        idle = self.proxy.idle[port]
        _, upstream = await loop.create_connection(lambda: Upstream(idle), "127.0.0.1", port)
        upstream.client = self
        upstream.transport.write(head)  # type: ignore[union-attr]

    def response_done(self) -> None:
        self.busy = False
        if self.close_after:
            self.transport.close()
            return
        if self.pending:
            self.send(self.pending.pop(0))


class Proxy:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.next = 0
        self.idle: dict[int, list[Upstream]] = {port: [] for port in ports}


async def main(port: int, backends: list[int]) -> None:
    proxy = Proxy(backends)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(proxy), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), [int(p) for p in sys.argv[2:]]))

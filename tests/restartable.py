"""A real HTTP echo backend that a test can stop (refusing connections) and start again."""

from __future__ import annotations

import asyncio

from lbproxy.demo.backends import EchoHttpProtocol


class RestartableBackend:
    """An echo HTTP backend on a fixed loopback port; ``stop`` closes it and its connections."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.protocols: set[EchoHttpProtocol] = set()
        self.requests = 0
        self.status_override: int | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._make, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    def _make(self) -> asyncio.Protocol:
        backend = self

        class Tracked(EchoHttpProtocol):
            def on_message_complete(self) -> None:
                backend.requests += 1
                if backend.status_override is not None:
                    assert self.transport is not None
                    body = b"forced\n"
                    self.transport.write(
                        b"HTTP/1.1 %d Forced\r\nContent-Length: %d\r\n\r\n%s"
                        % (backend.status_override, len(body), body)
                    )
                    return
                super().on_message_complete()

            def connection_lost(self, exc: Exception | None) -> None:
                backend.protocols.discard(self)

        protocol = Tracked(self.name)
        self.protocols.add(protocol)
        return protocol

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                protocol.transport.abort()
        self.protocols.clear()
        await asyncio.sleep(0)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

"""Fallback benchmark backend, used by ``run.py`` only when nginx is not installed.

Answers like the nginx backends of ``configs/backend-nginx.conf``: ``GET /64k`` gets 65,536 bytes,
any other request ``200 "hello world\\n"``; HTTP/1.1 keep-alive, ``Connection: close`` honoured.
Requests without bodies only (the benchmark sends GETs). Slower than nginx, so figures taken with
it are not comparable to the anchors'.

Usage: ``python benchmarks/backend.py PORT``
"""

from __future__ import annotations

import asyncio
import sys

SMALL = b"hello world\n"
LARGE = b"x" * 65536


def response(body: bytes, close: bool) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n"
        % (len(body), b"Connection: close\r\n" if close else b"")
    )
    return head + body


RESPONSES = {
    (False, False): response(SMALL, False),
    (False, True): response(SMALL, True),
    (True, False): response(LARGE, False),
    (True, True): response(LARGE, True),
}


class Backend(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self.transport.close()
                return
            head, self.buffer = self.buffer[:end].lower(), self.buffer[end + 4 :]
            request_line = head.split(b"\r\n", 1)[0]
            large = request_line.split(b" ", 2)[1:2] == [b"/64k"]
            close = b"\r\nconnection: close" in head or (
                request_line.endswith(b"http/1.0") and b"\r\nconnection: keep-alive" not in head
            )
            self.transport.write(RESPONSES[(large, close)])
            if close:
                self.transport.close()
                return


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Backend, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
    else:
        uvloop.run(main(int(sys.argv[1])))

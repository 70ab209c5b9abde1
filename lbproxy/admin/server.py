"""The admin listener: /healthz, /readyz, /status, /metrics.

Not on the data path, so it uses asyncio streams and answers one request per connection
(``Connection: close``). Requests are bounded: 8 KiB of head, 5 s to send it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from lbproxy import __version__
from lbproxy.admin.metrics import CONTENT_TYPE, make_registry, render
from lbproxy.l7.listener import HttpListener
from lbproxy.l7.responses import status_line
from lbproxy.net.bind import bind_socket, bound_address

if TYPE_CHECKING:
    import socket

    from lbproxy.config.model import Address, AdminConfig
    from lbproxy.runtime.daemon import Daemon

log = logging.getLogger("lbproxy.admin")

MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0


class AdminServer:
    """Serves the admin endpoints of one daemon."""

    def __init__(self, daemon: Daemon, config: AdminConfig, *, sock: socket.socket | None = None) -> None:
        self.daemon = daemon
        self.config = config
        self.registry = make_registry(daemon)
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> Address:
        assert self._sock is not None
        return bound_address(self._sock)

    async def start(self) -> None:
        if self._sock is None:
            self._sock = bind_socket(self.config.bind)
        self._server = await asyncio.start_server(self._handle, sock=self._sock)
        log.info("admin listener on %s", self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(HEAD_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            if len(head) > MAX_HEAD:
                await self._send(writer, 431, b"request header too large\n")
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await self._send(writer, 400, b"bad request\n")
                return
            method, target = parts[0], parts[1]
            path = target.split("?", 1)[0]
            status, content_type, body = self.dispatch(method, path)
            await self._send(writer, status, body, content_type, head_only=method == "HEAD")
        except Exception:  # noqa: BLE001 - the admin listener must survive anything
            log.exception("admin request failed")
        finally:
            writer.close()

    def dispatch(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Route an admin request to ``(status, content type, body)``."""
        routes = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/status": self._status,
        }
        handler = routes.get(path)
        if handler is None:
            return 404, "text/plain", b"not found\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        return handler()

    def _healthz(self) -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    def _readyz(self) -> tuple[int, str, bytes]:
        if self.daemon.ready:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready: shutting down\n"

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, render(self.registry)

    def _status(self) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self.daemon.status(), indent=2).encode() + b"\n"

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        head_only: bool = False,
    ) -> None:
        head = (
            status_line(status)
            + f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Cache-Control: no-store\r\nServer: lbproxy/{__version__}\r\nConnection: close\r\n\r\n".encode()
        )
        writer.write(head if head_only else head + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass


def listener_status(listener: object) -> dict[str, object]:
    """The /status view of one listener."""
    from lbproxy.net.listener import BaseListener

    assert isinstance(listener, BaseListener)
    view: dict[str, object] = {
        "name": listener.name,
        "mode": listener.config.mode,
        "bind": str(listener.address),
        "connections_active": len(listener.connections),
        "connections_total": listener.stats.connections_total,
        "bytes_in": listener.stats.bytes_in,
        "bytes_out": listener.stats.bytes_out,
    }
    if isinstance(listener, HttpListener):
        view["routes"] = [{"name": r.name, "pool": r.pool.name} for r in listener.router.routes]
        view["requests_total"] = sum(listener.request_counts.values())
    else:
        view["pool"] = listener.config.pool
    return view

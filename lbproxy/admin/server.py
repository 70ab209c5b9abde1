"""The admin listener: /healthz, /readyz, /status, /metrics, and backend actions.

Backend actions (POST only; with ``admin.token`` set, ``Authorization: Bearer TOKEN`` required):
``/pools/POOL/backends/ADDRESS/drain`` (no new work, in-flight work finishes), ``/disable``
(out of rotation), ``/enable`` (back in rotation), ``/weight?weight=N`` (or a JSON body
``{"weight": N}``). ADDRESS is the backend as configured, e.g. ``127.0.0.1:8001``.

Not on the data path, so it uses asyncio streams and answers one request per connection
(``Connection: close``). Requests are bounded: 8 KiB of head, 5 s to send it.

What it serves comes from an ``AdminTarget``: a single-process ``Daemon``, or with ``workers: N``
the ``Supervisor``, which answers for the whole daemon by asking every worker and merging.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from lbproxy import __version__
from lbproxy.admin.dashboard import PAGE
from lbproxy.admin.metrics import CONTENT_TYPE
from lbproxy.l7.listener import HttpListener
from lbproxy.l7.responses import status_line
from lbproxy.net.bind import bind_socket, bound_address

if TYPE_CHECKING:
    import socket

    from lbproxy.config.model import Address, AdminConfig
    from lbproxy.pool.backend import Backend
    from lbproxy.pool.pool import Pool

log = logging.getLogger("lbproxy.admin")

DASHBOARD = PAGE.encode("utf-8")
MAX_HEAD = 8192
MAX_BODY = 4096
HEAD_TIMEOUT = 5.0
BACKEND_ACTION = re.compile(r"/pools/(?P<pool>[^/]+)/backends/(?P<backend>[^/]+)/(?P<action>drain|disable|enable|weight)")


@dataclass(frozen=True, slots=True)
class AdminRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


def _weight_from(request: AdminRequest) -> int | None:
    """The weight asked for in ``?weight=N`` or a JSON body ``{"weight": N}``; None if invalid."""
    raw: object = request.query.get("weight", [None])[0]
    if raw is None and request.body:
        try:
            doc = json.loads(request.body)
        except ValueError:
            return None
        raw = doc.get("weight") if isinstance(doc, dict) else None
    if isinstance(raw, bool):
        return None
    try:
        weight = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return weight if 1 <= weight <= 1000 else None


class AdminTarget(Protocol):
    """What the admin listener serves: a ``Daemon``, or the ``Supervisor`` of several workers."""

    @property
    def ready(self) -> bool:
        """/readyz: True while accepting traffic."""

    async def status_document(self) -> dict[str, object]:
        """The /status JSON document."""

    async def metrics_text(self) -> bytes:
        """The /metrics body (Prometheus text format)."""

    async def backend_action(
        self, pool: str, backend: str, action: str, weight: int | None
    ) -> tuple[int, dict[str, object] | str]:
        """Apply drain | disable | enable | weight; ``(200, backend view)`` or ``(404, why)``."""

    async def reload_from_file(self) -> tuple[bool, list[str]]:
        """Re-read the config file: ``(applied, problems or restart notes)``."""


def apply_backend_action(pool: Pool, backend: Backend, action: str, weight: int | None) -> None:
    """Apply one admin action to ``backend`` (``weight`` is required for ``weight``)."""
    if action == "drain":
        backend.set_admin("draining", "by admin request")
    elif action == "disable":
        backend.set_admin("disabled", "by admin request")
    elif action == "enable":
        backend.set_admin("ready", "by admin request")
    elif action == "weight" and weight is not None:
        log.info("pool %s backend %s weight %s -> %d by admin request", pool.name, backend.label, backend.base_weight, weight)
        ramping = backend.weight != backend.base_weight
        backend.base_weight = weight
        if not ramping:
            backend.weight = weight
    else:
        raise ValueError(f"unknown admin action {action!r} (weight={weight!r})")


class AdminServer:
    """Serves the admin endpoints of one ``AdminTarget``."""

    def __init__(self, target: AdminTarget, config: AdminConfig, *, sock: socket.socket | None = None) -> None:
        self.target = target
        self.config = config
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
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await self._send(writer, 400, b"bad request\n")
                return
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = b""
            length = headers.get("content-length", "0")
            if not length.isdigit() or int(length) > MAX_BODY:
                await self._send(writer, 413, b"request body too large\n")
                return
            if int(length):
                async with asyncio.timeout(HEAD_TIMEOUT):
                    body = await reader.readexactly(int(length))
            method, target = parts[0], parts[1]
            path, _, query = target.partition("?")
            request = AdminRequest(method, urllib.parse.unquote(path), urllib.parse.parse_qs(query), headers, body)
            status, content_type, payload = await self.dispatch(request)
            await self._send(writer, status, payload, content_type, head_only=method == "HEAD")
        except Exception:  # noqa: BLE001 - the admin listener must survive anything
            log.exception("admin request failed")
        finally:
            writer.close()

    async def dispatch(self, request: AdminRequest) -> tuple[int, str, bytes]:
        """Route an admin request to ``(status, content type, body)``."""
        routes = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics,
            "/status": self._status,
            "/": self._dashboard,
        }
        handler = routes.get(request.path)
        if handler is not None:
            if request.method not in ("GET", "HEAD"):
                return 405, "text/plain", b"method not allowed: use GET\n"
            return await handler()
        match = BACKEND_ACTION.fullmatch(request.path)
        if match is None and request.path != "/reload":
            return 404, "text/plain", b"not found\n"
        if request.method != "POST":
            return 405, "text/plain", b"method not allowed: use POST\n"
        token = self.config.token
        if token is not None and not hmac.compare_digest(
            request.headers.get("authorization", "").encode(), f"Bearer {token}".encode()
        ):
            return 401, "text/plain", b"missing or wrong bearer token\n"
        if match is None:
            return await self._reload()
        return await self._backend_action(match["pool"], match["backend"], match["action"], request)

    async def _reload(self) -> tuple[int, str, bytes]:
        applied, messages = await self.target.reload_from_file()
        body = json.dumps({"applied": applied, "messages": messages}, indent=2).encode() + b"\n"
        return (200 if applied else 400), "application/json", body

    async def _backend_action(
        self, pool_name: str, label: str, action: str, request: AdminRequest
    ) -> tuple[int, str, bytes]:
        weight = None
        if action == "weight":
            weight = _weight_from(request)
            if weight is None:
                return 400, "text/plain", b"give the weight as ?weight=N or a JSON body {\"weight\": N}, 1-1000\n"
        status, view = await self.target.backend_action(pool_name, label, action, weight)
        if isinstance(view, str):
            return status, "text/plain", view.encode()
        return status, "application/json", json.dumps(view).encode() + b"\n"

    async def _dashboard(self) -> tuple[int, str, bytes]:
        return 200, "text/html; charset=utf-8", DASHBOARD

    async def _healthz(self) -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    async def _readyz(self) -> tuple[int, str, bytes]:
        if self.target.ready:
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready: shutting down\n"

    async def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, await self.target.metrics_text()

    async def _status(self) -> tuple[int, str, bytes]:
        document = await self.target.status_document()
        return 200, "application/json", json.dumps(document, indent=2).encode() + b"\n"

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
        view["routes"] = [
            {"name": r.name, "pool": ", ".join(p.name for p in r.pools()) or "(redirect)"} for r in listener.router.routes
        ]
        view["requests_total"] = listener.tally.total()
    else:
        view["pool"] = listener.config.pool
    return view

"""Dialing a backend: one TCP connect with a bound, reported through a callback.

``loop.create_connection`` is a coroutine, so each new upstream connection costs one task; that
is per connection, never per request or per chunk (L7 reuses pooled connections). The callback
style keeps the data paths free of awaits. Errors are translated here, once, into the project's
exception tree.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from lbproxy.errors import ConnectRefused, ConnectTimeout, UpstreamError, UpstreamReset
from lbproxy.stats import Histogram

if TYPE_CHECKING:
    from ssl import SSLContext

P = TypeVar("P", bound=asyncio.Protocol)


class Dial(Generic[P]):
    """One connect attempt in progress. ``cancel()`` abandons it (a late success is closed).

    The callback gets a protocol whose transport is open, or an error: a connection the peer
    closed or reset before the attempt completed is reported as ``UpstreamReset``."""

    __slots__ = ("_task", "_timer", "_callback", "_done", "started", "target", "_loop", "_durations")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        factory: Callable[[], P],
        timeout: float,
        callback: Callable[[P | None, UpstreamError | None], None],
        *,
        ssl: SSLContext | None = None,
        server_hostname: str | None = None,
        durations: Histogram | None = None,
    ) -> None:
        self._callback = callback
        self._done = False
        self._loop = loop
        self._durations = durations
        self.started = loop.time()
        self.target = f"{host}:{port}"
        if ssl is None:
            coro = loop.create_connection(factory, host, port)
        else:
            # The TLS handshake counts against the connect timeout.
            coro = loop.create_connection(
                factory, host, port, ssl=ssl, server_hostname=server_hostname, ssl_handshake_timeout=timeout
            )
        self._task = loop.create_task(coro)
        self._task.add_done_callback(self._on_task_done)
        self._timer: asyncio.TimerHandle | None = loop.call_later(timeout, self._on_timeout)

    def cancel(self) -> None:
        """Abandon the attempt; the callback will not be called."""
        if self._done:
            return
        self._done = True
        self._clear_timer()
        self._task.cancel()

    def _clear_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        if self._done:
            return
        self._done = True
        self._task.cancel()
        self._callback(None, ConnectTimeout(f"connect to {self.target} timed out"))

    def _on_task_done(self, task: asyncio.Task[tuple[asyncio.BaseTransport, P]]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if self._done:
            # Abandoned or timed out, but the connect won the race: don't leak the socket.
            if exc is None:
                task.result()[0].close()
            return
        self._done = True
        self._clear_timer()
        if exc is not None:
            self._callback(None, translate_connect_error(exc, self.target))
            return
        transport, protocol = task.result()
        if transport.is_closing():
            # Connected, then closed before this callback: a backend whose listening socket
            # closed with us in its accept queue (a stopping server) resets at once. The
            # protocol has had its connection_lost already, so handing it over as connected
            # would leave its user waiting for events that never come: a failed connect.
            self._callback(None, UpstreamReset(f"{self.target} closed the connection right after connect"))
            return
        if self._durations is not None:
            self._durations.observe(self._loop.time() - self.started)
        self._callback(protocol, None)


def translate_connect_error(exc: BaseException, target: str) -> UpstreamError:
    """Map an OSError from connect() onto ConnectRefused / ConnectTimeout."""
    if isinstance(exc, TimeoutError) or getattr(exc, "errno", None) == errno.ETIMEDOUT:
        return ConnectTimeout(f"connect to {target} timed out")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectRefused(f"connect to {target} refused")
    return ConnectRefused(f"connect to {target} failed: {exc}")

"""The TCP (L4) data path: accept, pick a backend, dial it, then pipe bytes both ways.

How this works:
- ``TcpSession`` is the downstream protocol; it owns one ``TcpUpstream`` once the dial succeeds.
- Until the upstream is connected the client socket is paused (at most one read is buffered).
- Backpressure: when one side's transport asks us to pause writing, we pause reading the other
  side, and resume it on ``resume_writing``. Buffers are bounded by the transports' high-water marks.
- Half-close: EOF from one side becomes ``write_eof`` on the other; the session closes when both
  sides have sent EOF, or when either side errors (a reset is passed on as an abort).
- Idle: one timer per session, re-armed lazily from a ``last_activity`` stamp (no timer churn per
  chunk).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from lbproxy.errors import UpstreamError
from lbproxy.net import proxy_protocol
from lbproxy.net.bind import peer_host
from lbproxy.net.connect import Dial
from lbproxy.net.listener import BaseListener

if TYPE_CHECKING:
    from lbproxy.config.model import ListenerConfig
    from lbproxy.pool.backend import Backend
    from lbproxy.pool.pool import Pool

log = logging.getLogger("lbproxy.l4")

PROXY_HEADER_TIMEOUT = 5.0


class TcpListener(BaseListener):
    """A ``mode: tcp`` listener: each connection is spliced to one backend of ``pool``."""

    def __init__(self, config: ListenerConfig, pool: Pool, **kwargs: object) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.pool = pool
        self.idle_timeout = config.idle_timeout

    def protocol_factory(self) -> asyncio.Protocol:
        return TcpSession(self)


class TcpUpstream(asyncio.Protocol):
    """The backend side of a session: forwards everything to the session."""

    __slots__ = ("session", "transport")

    def __init__(self, session: TcpSession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.session.upstream_data(data)

    def eof_received(self) -> bool:
        return self.session.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.session.pause_downstream_reading()

    def resume_writing(self) -> None:
        self.session.resume_downstream_reading()


class TcpSession(asyncio.Protocol):
    """One client connection and, once dialed, its backend connection."""

    __slots__ = (
        "listener",
        "loop",
        "transport",
        "upstream",
        "backend",
        "client",
        "local",
        "dial",
        "tried",
        "pending",
        "header_buffer",
        "down_eof",
        "up_eof",
        "closed",
        "last_activity",
        "idle_timer",
        "down_paused",
    )

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.upstream: TcpUpstream | None = None
        self.backend: Backend | None = None
        self.client: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.dial: Dial | None = None
        self.tried: list[Backend] = []
        self.pending: list[bytes] = []
        self.header_buffer: bytes | None = None
        self.down_eof = False
        self.up_eof = False
        self.closed = False
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.down_paused = False

    # -- downstream protocol callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.listener.admit(self):
            transport.abort()
            self.closed = True
            return
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = (peer_host(peer), peer[1] if isinstance(peer, tuple) else 0)
        self.local = (peer_host(sock), sock[1] if isinstance(sock, tuple) else 0)
        self.last_activity = self.loop.time()
        if self.listener.config.accept_proxy_protocol:
            if not self.listener.proxy_protocol_from.contains(self.client[0]):
                log.info("listener %s: PROXY header from untrusted %s refused", self.listener.name, self.client[0])
                self._close(abort=True)
                return
            self.header_buffer = b""
            self._arm_idle(PROXY_HEADER_TIMEOUT)
            return
        self.transport.pause_reading()  # type: ignore[union-attr]
        self.down_paused = True
        self._arm_idle(self.listener.idle_timeout)
        self._dial_next(None)

    def data_received(self, data: bytes) -> None:
        self.listener.stats.bytes_in += len(data)
        self.last_activity = self.loop.time()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)
            return
        if self.header_buffer is not None:
            self._read_proxy_header(data)
            return
        self.pending.append(data)

    def eof_received(self) -> bool:
        self.down_eof = True
        upstream = self.upstream
        if upstream is None:
            if self.header_buffer is not None or self.dial is None:
                self._close()
                return False
            return True  # still dialing: pass the EOF on once connected
        assert upstream.transport is not None
        if upstream.transport.can_write_eof() and not upstream.transport.is_closing():
            upstream.transport.write_eof()
        if self.up_eof:
            self._close()
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.forget(self)
        self._cancel_idle()
        if self.dial is not None:
            self.dial.cancel()
            self.dial = None
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.transport.is_closing():
            if exc is not None:
                upstream.transport.abort()
            else:
                upstream.transport.close()
        self._release_backend()

    def pause_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.transport.is_closing():
            upstream.transport.resume_reading()

    # -- upstream events -----------------------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        self.listener.stats.bytes_out += len(data)
        self.last_activity = self.loop.time()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def upstream_eof(self) -> bool:
        self.up_eof = True
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()
        if self.down_eof:
            self._close()
            return False
        return True

    def upstream_lost(self, exc: Exception | None) -> None:
        self.up_eof = True
        if exc is not None:
            self._close(abort=True)
        else:
            self._close()

    def pause_downstream_reading(self) -> None:
        transport = self.transport
        if transport is not None and not self.down_paused and not transport.is_closing():
            self.down_paused = True
            transport.pause_reading()

    def resume_downstream_reading(self) -> None:
        transport = self.transport
        if transport is not None and self.down_paused and not transport.is_closing():
            self.down_paused = False
            transport.resume_reading()

    # -- drain (Drainable) ---------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """TCP has no message boundary: let the connection run until it ends or drain times out."""

    def abort(self) -> None:
        self._close(abort=True)

    # -- internals -----------------------------------------------------------------------------

    def _read_proxy_header(self, data: bytes) -> None:
        assert self.header_buffer is not None
        buffer = self.header_buffer + data
        try:
            parsed = proxy_protocol.parse(buffer)
        except proxy_protocol.ProxyProtocolError as exc:
            log.info("listener %s: bad PROXY header from %s: %s", self.listener.name, self.client[0], exc)
            self._close(abort=True)
            return
        if parsed is None:
            self.header_buffer = buffer
            return
        info, consumed = parsed
        self.header_buffer = None
        if info.source is not None:
            self.client = info.source
        if info.destination is not None:
            self.local = info.destination
        rest = buffer[consumed:]
        if rest:
            self.pending.append(rest)
        assert self.transport is not None
        self.transport.pause_reading()
        self.down_paused = True
        self._arm_idle(self.listener.idle_timeout)
        self._dial_next(None)

    def _dial_next(self, error: UpstreamError | None) -> None:
        pool = self.listener.pool
        if len(self.tried) > pool.config.retries:
            backend = None
        else:
            backend = pool.pick(self.client[0], self.tried)
        if backend is None:
            if error is None:
                log.debug("listener %s: no available backend in pool %s", self.listener.name, pool.name)
            else:
                log.info("listener %s: giving up on pool %s: %s", self.listener.name, pool.name, error)
            self._close(abort=error is None)
            return
        self.tried.append(backend)
        backend.acquire()
        self.backend = backend
        self.dial = Dial(
            self.loop,
            backend.host,
            backend.port,
            lambda: TcpUpstream(self),
            pool.config.connect_timeout,
            self._on_dialed,
        )

    def _on_dialed(self, upstream: asyncio.Protocol | None, error: UpstreamError | None) -> None:
        self.dial = None
        if self.closed:
            if upstream is not None:
                upstream.transport.close()  # type: ignore[attr-defined]
            return
        if upstream is None:
            assert self.backend is not None and error is not None
            self.backend.note_failure()
            self._release_backend()
            self._dial_next(error)
            return
        assert isinstance(upstream, TcpUpstream) and upstream.transport is not None
        assert self.backend is not None
        self.backend.note_success()
        self.upstream = upstream
        transport = upstream.transport
        version = self._proxy_protocol_version()
        if version is not None:
            build = proxy_protocol.build_v2 if version == "v2" else proxy_protocol.build_v1
            transport.write(build(self.client, self.local))
        if self.pending:
            transport.writelines(self.pending)
            self.pending = []
        if self.down_eof:
            if transport.can_write_eof():
                transport.write_eof()
            return
        self.resume_downstream_reading()

    def _proxy_protocol_version(self) -> str | None:
        backend = self.backend
        assert backend is not None
        return backend.config.proxy_protocol or self.listener.pool.config.proxy_protocol

    def _release_backend(self) -> None:
        if self.backend is not None:
            self.backend.release()
            self.backend = None

    def _arm_idle(self, timeout: float) -> None:
        self._cancel_idle()
        self.idle_timer = self.loop.call_at(self.last_activity + timeout, self._on_idle, timeout)

    def _cancel_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _on_idle(self, timeout: float) -> None:
        self.idle_timer = None
        if self.closed:
            return
        deadline = self.last_activity + timeout
        if self.loop.time() < deadline:
            self.idle_timer = self.loop.call_at(deadline, self._on_idle, timeout)
            return
        log.debug("listener %s: closing idle connection from %s", self.listener.name, self.client[0])
        self._close(abort=True)

    def _close(self, abort: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.transport.is_closing():
            if abort:
                upstream.transport.abort()
            else:
                upstream.transport.close()

    def __repr__(self) -> str:
        return f"<TcpSession {self.client[0]}:{self.client[1]} backend={self.backend!r} closed={self.closed}>"

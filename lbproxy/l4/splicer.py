"""The TCP (L4) data path: accept, pick a backend, dial it, then pipe bytes both ways.

How this works:
- ``TcpSession`` is the downstream protocol; it owns one ``TcpUpstream`` once the dial succeeds.
- Until the upstream is connected the client socket is paused (at most one read is buffered).
- A ``TcpUpstream`` forwards its events only while its ``session`` is set: a connection that the
  session gave up on (connect timeout lost the race, client gone) is detached, so its late bytes
  or close never reach the client.
- Backpressure: when one side's transport asks us to pause writing, we pause reading the other
  side, and resume it on ``resume_writing``. Buffers are bounded by the transports' high-water marks.
- PROXY header (``accept_proxy_protocol``): read before anything else, within a fixed deadline
  (``PROXY_HEADER_TIMEOUT`` or the idle timeout, whichever is shorter; trickled bytes don't extend
  it); the address it carries replaces the socket's peer for balancing, logs and the header we
  send on.
- Half-close: EOF from one side becomes ``write_eof`` on the other; the session closes when both
  sides have sent EOF, or when either side errors (a reset is passed on as a reset: RST).
- Idle: one timer per session, re-armed lazily from a ``last_activity`` stamp (no timer churn per
  chunk).
- ``splice: true`` (Linux): once dialed and flushed, both sockets go to a ``SplicePump`` (see
  ``lbproxy.l4.splice``) that relays with splice(2); the session keeps its idle timer, counts
  and end-of-connection bookkeeping, fed by the pump.
- Access log (when the listener has one): one line per connection at ``connection_lost``, with
  the client (the PROXY header's address when there was one), backend, bytes each way, duration
  and ``termination``: empty for a normal end, else the first reason the session recorded.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import TYPE_CHECKING

from lbproxy.errors import UpstreamError
from lbproxy.l4.splice import SplicePump, splice_supported
from lbproxy.net import proxy_protocol
from lbproxy.net.bind import peer_host
from lbproxy.net.connect import Dial
from lbproxy.tls.clienthello import NotTls, match_server_name, read_sni
from lbproxy.net.listener import BaseListener, reset

if TYPE_CHECKING:
    from lbproxy.accesslog import AccessLog
    from lbproxy.config.model import ListenerConfig
    from lbproxy.pool.backend import Backend
    from lbproxy.pool.pool import Pool

log = logging.getLogger("lbproxy.l4")

SPLICE_SUPPORTED = splice_supported()
PROXY_HEADER_TIMEOUT = 5.0
"""Seconds a client on an ``accept_proxy_protocol`` tcp listener has to send the whole header."""


class TcpListener(BaseListener):
    """A ``mode: tcp`` listener: each connection is spliced to one backend of ``pool``.

    ``access_log``, when given, gets one ``log_connection`` call per finished connection.
    """

    def __init__(
        self, config: ListenerConfig, pool: Pool, access_log: AccessLog | None = None, **kwargs: object
    ) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.pool = pool
        self.idle_timeout = config.idle_timeout
        self.access_log = access_log
        # TLS passthrough routing: (server name pattern, pool) pairs tried in order; ``pool`` is
        # the default. Set by the daemon (it owns the pool objects).
        self.sni_routes: list[tuple[str, Pool]] = []
        if config.splice and not splice_supported():
            log.warning("listener %s: splice is not supported here; relaying through the event loop", config.name)

    @property
    def splice(self) -> bool:
        """Whether new connections are relayed with splice(2) (``splice: true``, read per
        connection so a reload applies to the next ones)."""
        return self.config.splice and SPLICE_SUPPORTED

    def protocol_factory(self) -> asyncio.Protocol:
        return TcpSession(self)


class TcpUpstream(asyncio.Protocol):
    """The backend side of a session: forwards everything to the session while attached.

    ``session`` is None once the session has given up on this connection (``detach``); a
    detached upstream ignores its events (the Dial or the session closes its transport).
    """

    __slots__ = ("session", "transport")

    def __init__(self, session: TcpSession) -> None:
        self.session: TcpSession | None = session
        self.transport: asyncio.Transport | None = None

    def detach(self) -> None:
        self.session = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            session.upstream_data(data)

    def eof_received(self) -> bool:
        session = self.session
        if session is None:
            return False
        return session.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        session = self.session
        # Lost while the dial is still in progress: the Dial reports it (UpstreamReset) and
        # the session tries the next backend, as for a refused connect.
        if session is not None and session.connecting is not self:
            session.upstream_lost(exc)

    def pause_writing(self) -> None:
        session = self.session
        if session is not None:
            session.upstream_full = True
            session.pause_downstream_reading()

    def resume_writing(self) -> None:
        session = self.session
        if session is not None:
            session.upstream_full = False
            session.resume_downstream_reading()


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
        "connecting",
        "tried",
        "pending",
        "header_buffer",
        "hello_buffer",
        "hello_read",
        "pool",
        "down_eof",
        "up_eof",
        "closed",
        "last_activity",
        "idle_timer",
        "down_paused",
        "upstream_full",
        "started",
        "bytes_in",
        "bytes_out",
        "backend_label",
        "termination",
        "splice",
    )

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.upstream: TcpUpstream | None = None
        self.backend: Backend | None = None
        self.client: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] | None = None  # read from the socket when first needed
        self.dial: Dial | None = None
        self.connecting: TcpUpstream | None = None
        self.tried: list[Backend] = []
        self.pending: list[bytes] = []
        self.header_buffer: bytes | None = None
        self.hello_buffer: bytes | None = None  # waiting for a TLS ClientHello (sni_routes)
        self.hello_read = False
        self.pool = listener.pool  # sni_routes may choose another
        self.down_eof = False
        self.up_eof = False
        self.closed = False
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.down_paused = False
        self.upstream_full = False
        self.started = 0.0
        self.bytes_in = 0  # from the client
        self.bytes_out = 0  # to the client
        self.backend_label = ""
        self.termination = ""  # why the connection ended, when not normally (access log)
        self.splice: SplicePump | None = None  # the relay, once handed over (``splice: true``)

    # -- downstream protocol callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp_transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tcp_transport
        if not self.listener.admit(self):
            reset(tcp_transport)  # over max_connections (or stopping): refused
            self.closed = True
            return
        peer = transport.get_extra_info("peername")
        self.client = (peer_host(peer), peer[1] if isinstance(peer, tuple) else 0)
        self.last_activity = self.started = self.loop.time()
        if self.listener.config.accept_proxy_protocol:
            if not self.listener.proxy_protocol_from.contains(self.client[0]):
                log.info("listener %s: PROXY header from untrusted %s refused", self.listener.name, self.client[0])
                self._end("proxy_header_untrusted")
                return
            self.header_buffer = b""
            timeout = min(PROXY_HEADER_TIMEOUT, self.listener.idle_timeout)
            self.idle_timer = self.loop.call_later(timeout, self._on_header_timeout)
            return
        if not self.listener.claim_client(self, self.client[0]):
            self._end("client_limit")
            return
        self._after_preamble()

    def _local_address(self) -> tuple[str, int]:
        """The address the client connected to (or the PROXY header's destination). Read on
        first use: only a PROXY header sent upstream needs it, and asking the socket costs a
        getsockname() syscall per connection (issue 8)."""
        if self.local is None:
            sock = self.transport.get_extra_info("sockname") if self.transport is not None else None
            self.local = (peer_host(sock), sock[1] if isinstance(sock, tuple) else 0)
        return self.local

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.listener.stats.bytes_in += size
        self.bytes_in += size
        self.last_activity = self.loop.time()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)
            return
        if self.header_buffer is not None:
            self._read_proxy_header(data)
            return
        if self.hello_buffer is not None:
            self._read_client_hello(data)
            return
        self.pending.append(data)

    def eof_received(self) -> bool:
        self.down_eof = True
        upstream = self.upstream
        if upstream is None:
            if self.header_buffer is not None or self.hello_buffer is not None or self.dial is None:
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
        if self.closed:  # refused by admit(): never registered, nothing to log
            return
        if self.splice is not None:
            return  # the transport let go of its socket; the pump ends the connection
        self.closed = True
        if exc is not None and not self.termination:
            self.termination = "client_reset"
        self.listener.forget(self)
        self._cancel_idle()
        if self.dial is not None:
            self.dial.cancel()
            self.dial = None
        if self.connecting is not None:
            self.connecting.detach()
            self.connecting = None
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.transport.is_closing():
            if exc is not None:
                reset(upstream.transport)  # the client reset (or its socket failed): pass it on
            else:
                upstream.transport.close()
        if upstream is not None:
            # The client side is gone: nothing the backend side does matters now, and detaching
            # breaks the session <-> upstream reference cycle, so both are freed at once rather
            # than by the cyclic GC (issue 8).
            upstream.detach()
        self._release_backend()
        self._log_connection()

    def _log_connection(self) -> None:
        access_log = self.listener.access_log
        if access_log is not None:
            access_log.log_connection(
                self.listener.name,
                self.client[0],
                self.pool.name,
                self.backend_label or None,
                self.bytes_in,
                self.bytes_out,
                self.loop.time() - self.started,
                self.termination,
            )

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
        size = len(data)
        self.listener.stats.bytes_out += size
        self.bytes_out += size
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
            self._end("backend_reset")
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

    # -- splice (SplicePump events) -----------------------------------------------------------

    def spliced_bytes(self, size: int, upstream: bool) -> None:
        """The pump moved ``size`` bytes, client → backend when ``upstream``."""
        self.last_activity = self.loop.time()
        if upstream:
            self.bytes_in += size
            self.listener.stats.bytes_in += size
        else:
            self.bytes_out += size
            self.listener.stats.bytes_out += size

    def splice_ended(self, termination: str) -> None:
        """The pump closed both sockets: the connection is over."""
        if self.closed:
            return
        self.closed = True
        if termination and not self.termination:
            self.termination = termination
        self.listener.forget(self)
        self._cancel_idle()
        self._release_backend()
        self._log_connection()

    # -- drain (Drainable) ---------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """TCP has no message boundary: let the connection run until it ends or drain times out."""

    def abort(self) -> None:
        self._end("shutdown")

    # -- internals -----------------------------------------------------------------------------

    def _read_proxy_header(self, data: bytes) -> None:
        assert self.header_buffer is not None
        buffer = self.header_buffer + data
        try:
            parsed = proxy_protocol.parse(buffer)
        except proxy_protocol.ProxyProtocolError as exc:
            log.info("listener %s: bad PROXY header from %s: %s", self.listener.name, self.client[0], exc)
            self._end("proxy_header_invalid")
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
        self._cancel_idle()
        self.last_activity = self.loop.time()
        if not self.listener.claim_client(self, self.client[0]):
            self._end("client_limit")
            return
        if self.listener.sni_routes:
            self._await_client_hello(rest)  # the ClientHello follows the PROXY header
            return
        if rest:
            self.pending.append(rest)
        self._after_preamble()

    def _after_preamble(self) -> None:
        """The connection's own preamble (none, or a PROXY header) is read: route and dial."""
        if self.listener.sni_routes and not self.hello_read:
            self._await_client_hello(b"")
            return
        assert self.transport is not None
        self.transport.pause_reading()
        self.down_paused = True
        self._arm_idle(self.listener.idle_timeout)
        self._dial_next(None)

    def _await_client_hello(self, first: bytes) -> None:
        self.hello_buffer = b""
        self.idle_timer = self.loop.call_later(self.listener.config.client_hello_timeout, self._on_hello_timeout)
        if first:
            self._read_client_hello(first)

    def _read_client_hello(self, data: bytes) -> None:
        """Peek at the ClientHello's server name to choose the pool; the bytes go on untouched."""
        assert self.hello_buffer is not None
        buffer = self.hello_buffer + data
        try:
            complete, server_name = read_sni(buffer)
        except NotTls as exc:
            log.info("listener %s: not a TLS ClientHello from %s: %s", self.listener.name, self.client[0], exc)
            self._end("not_tls")
            return
        if not complete:
            self.hello_buffer = buffer
            return
        self.hello_buffer = None
        self.hello_read = True
        self._cancel_idle()
        self.pool = match_server_name(server_name, self.listener.sni_routes) or self.listener.pool
        self.pending.append(buffer)
        self.last_activity = self.loop.time()
        self._after_preamble()

    def _on_hello_timeout(self) -> None:
        self.idle_timer = None
        if self.closed or self.hello_buffer is None:
            return
        log.info("listener %s: no TLS ClientHello from %s in time", self.listener.name, self.client[0])
        self._end("client_hello_timeout")

    def _on_header_timeout(self) -> None:
        self.idle_timer = None
        if self.closed or self.header_buffer is None:
            return
        log.info("listener %s: no PROXY header from %s in time", self.listener.name, self.client[0])
        self._end("proxy_header_timeout")

    def _dial_next(self, error: UpstreamError | None) -> None:
        pool = self.pool
        if len(self.tried) > pool.config.retries:
            backend = None
        else:
            backend = pool.pick(self.client[0], self.tried)
        if backend is None:
            if error is None:
                log.debug("listener %s: no available backend in pool %s", self.listener.name, pool.name)
            else:
                log.info("listener %s: giving up on pool %s: %s", self.listener.name, pool.name, error)
            self._end("no_backend" if error is None else error.kind)
            return
        if self.tried:
            pool.retries_total += 1  # another attempt after a failed one
        self.tried.append(backend)
        backend.acquire()
        self.backend = backend
        self.dial = Dial(
            self.loop,
            backend.host,
            backend.port,
            self._new_upstream,
            pool.config.connect_timeout,
            self._on_dialed,
            durations=pool.connect_durations,
        )

    def _new_upstream(self) -> TcpUpstream:
        upstream = TcpUpstream(self)
        self.connecting = upstream
        return upstream

    def _on_dialed(self, upstream: TcpUpstream | None, error: UpstreamError | None) -> None:
        """The Dial finished: attach ``upstream``, or count the failure and try the next backend."""
        self.dial = None
        connecting = self.connecting
        self.connecting = None
        client_gone = self.closed or self.transport is None or self.transport.is_closing()
        if upstream is None:
            if connecting is not None:
                connecting.detach()  # a connect that lost the race with the timeout, if any
            assert self.backend is not None and error is not None
            self.backend.note_failure(error.kind)
            self._release_backend()
            if not client_gone:
                self._dial_next(error)
            return
        assert upstream.transport is not None
        if client_gone:
            upstream.detach()
            upstream.transport.close()
            return
        assert self.backend is not None
        self.backend.note_success()
        self.backend_label = self.backend.label
        self.upstream = upstream
        transport = upstream.transport
        version = self._proxy_protocol_version()
        if version is not None:
            build = proxy_protocol.build_v2 if version == "v2" else proxy_protocol.build_v1
            transport.write(build(self.client, self._local_address()))
        if self.pending:
            transport.writelines(self.pending)
            self.pending = []
        if self.down_eof:
            if transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()
            return
        if self.listener.splice and self._start_splice(upstream):
            return
        if not self.upstream_full:
            self.resume_downstream_reading()

    def _start_splice(self, upstream: TcpUpstream) -> bool:
        """Hand both connections to a SplicePump; False (stay on the transports) when a transport
        still holds unsent bytes or the sockets can't be duplicated."""
        down, up = self.transport, upstream.transport
        assert down is not None and up is not None
        if down.get_write_buffer_size() or up.get_write_buffer_size():
            return False  # rare (a PROXY header or early bytes not flushed yet): no splice
        down_socket, up_socket = down.get_extra_info("socket"), up.get_extra_info("socket")
        if down_socket is None or up_socket is None:
            return False
        taken: list[socket.socket] = []
        try:
            for original in (down_socket, up_socket):
                duplicate = socket.socket(fileno=os.dup(original.fileno()))
                duplicate.setblocking(False)
                taken.append(duplicate)
            pump = SplicePump(self.loop, self, taken[0], taken[1])
        except OSError as exc:
            log.warning("listener %s: cannot splice (%s); relaying through the event loop", self.listener.name, exc)
            for duplicate in taken:
                duplicate.close()
            return False
        self.splice = pump
        upstream.detach()
        # The transports close their descriptors; the duplicates keep both connections open
        # (a close with another descriptor open sends nothing to the peer).
        up.abort()
        down.abort()
        pump.start()
        return True

    def _proxy_protocol_version(self) -> str | None:
        backend = self.backend
        assert backend is not None
        return backend.config.proxy_protocol or self.pool.config.proxy_protocol

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
        self._end("idle_timeout")

    def _end(self, termination: str) -> None:
        """Reset both sides, recording why (the first reason wins)."""
        if not self.termination:
            self.termination = termination
        self._close(abort=True)

    def _close(self, abort: bool = False) -> None:
        """Close both sides: gracefully (pending bytes are flushed, then FIN), or with ``abort``
        at once with a reset (RST), so neither peer mistakes the end for a complete stream."""
        if self.splice is not None:
            self.splice.close(abort, self.termination)
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if abort:
                reset(transport)
            else:
                transport.close()
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.transport.is_closing():
            if abort:
                reset(upstream.transport)
            else:
                upstream.transport.close()

    def __repr__(self) -> str:
        return f"<TcpSession {self.client[0]}:{self.client[1]} backend={self.backend!r} closed={self.closed}>"

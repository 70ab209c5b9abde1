"""HttpSession: the downstream (client) side of an ``http`` listener connection.

How this works:
- httptools parses the client's bytes; its callbacks only record state on the Exchange being
  parsed (``parsing``) and never raise except DownstreamError, which ``data_received`` turns into
  a 4xx answer and a close (uvicorn's rule: a parser error becomes a 400, nothing escapes).
- Exchanges are answered in order: ``current`` is served, the ones behind it wait in ``queue``.
- Reading from the client is paused while the upstream can't take more request bytes, or while
  bytes are buffered because no upstream is attached yet (dialing, or pipelined behind another).
- One timer per connection enforces the phase's bound: request-header time (408), client
  silence during a body (408), keep-alive idleness (silent close). Phases move a deadline; the
  timer re-arms lazily, so there is no timer churn per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING

import httptools

from lbproxy.errors import DownstreamError
from lbproxy.l7.exchange import Exchange
from lbproxy.l7.responses import error_response
from lbproxy.net import proxy_protocol
from lbproxy.net.bind import peer_host

if TYPE_CHECKING:
    from lbproxy.l7.listener import HttpListener

log = logging.getLogger("lbproxy.l7")

PHASE_NONE = 0  # waiting on the backend: upstream timers apply
PHASE_IDLE = 1  # keep-alive, between requests
PHASE_HEADERS = 2  # reading a request head
PHASE_BODY = 3  # reading a request body
PHASE_PROXY_HEADER = 4  # waiting for a PROXY protocol header

MAX_PIPELINE = 16
_INF = float("inf")


class HttpSession(asyncio.Protocol):
    """One client connection on an ``http`` listener."""

    __slots__ = (
        "listener",
        "loop",
        "transport",
        "parser",
        "client_host",
        "client_port",
        "local_address",
        "trusted",
        "current",
        "parsing",
        "queue",
        "phase",
        "deadline",
        "timer",
        "header_bytes",
        "closing",
        "closed",
        "reading_paused",
        "read_paused_by_upstream",
        "read_paused_by_buffer",
        "tunnel",
        "upgrade_exchange",
        "proxy_buffer",
        "requests",
    )

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_host = ""
        self.client_port = 0
        self.local_address: tuple[str, int] = ("", 0)
        self.trusted = False
        self.current: Exchange | None = None
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.phase = PHASE_NONE
        self.deadline = _INF
        self.timer: asyncio.TimerHandle | None = None
        self.header_bytes = 0
        self.closing = False
        self.closed = False
        self.reading_paused = False
        self.read_paused_by_upstream = False
        self.read_paused_by_buffer = False
        self.tunnel: Exchange | None = None
        self.upgrade_exchange: Exchange | None = None
        self.proxy_buffer: bytes | None = None
        self.requests = 0

    # == asyncio.Protocol =======================================================================

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        if not listener.admit(self):
            transport.abort()
            self.closed = True
            return
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client_host = peer_host(peer)
        self.client_port = peer[1] if isinstance(peer, tuple) else 0
        self.local_address = (peer_host(sock), sock[1] if isinstance(sock, tuple) else 0)
        if listener.config.accept_proxy_protocol:
            if not listener.proxy_protocol_from.contains(self.client_host):
                log.info("listener %s: PROXY header from untrusted %s refused", listener.name, self.client_host)
                self.abort()
                return
            self.proxy_buffer = b""
            self._set_phase(PHASE_PROXY_HEADER, listener.limits.request_header_timeout)
            return
        self.trusted = listener.is_trusted(self.client_host)
        # A new connection must send its first request head within request_header_timeout.
        self._set_phase(PHASE_IDLE, listener.limits.request_header_timeout)

    def data_received(self, data: bytes) -> None:
        self.listener.stats.bytes_in += len(data)
        if self.tunnel is not None:
            self.tunnel.tunnel_from_client(data)
            return
        if self.upgrade_exchange is not None:
            self.upgrade_exchange.tunnel_from_client(data)
            return
        if self.proxy_buffer is not None:
            data = self._read_proxy_header(data)
            if not data:
                return
        if self.phase <= PHASE_HEADERS:
            self.header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_upgrade(data, upgrade)
            return
        except DownstreamError as exc:
            self._refuse(exc.status, str(exc))
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, DownstreamError):
                self._refuse(cause.status, str(cause))
            else:
                log.error("listener %s: internal error on a request", self.listener.name, exc_info=cause)
                self._refuse(500, "internal error")
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed request: {exc}")
            return
        if self.phase == PHASE_HEADERS and self.header_bytes > self.listener.limits.max_header_bytes:
            self._refuse(431, "request header too large")

    def eof_received(self) -> bool:
        # A client that half-closes after its request still gets the response.
        if self.current is None and self.parsing is None:
            self._close()
            return False
        self.closing = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending = [self.current, *self.queue] if self.current is not None else list(self.queue)
        if self.parsing is not None and self.parsing not in pending:
            pending.append(self.parsing)
        self.queue.clear()
        for exchange in pending:
            if exchange is not None and not exchange.finished:
                exchange.cancel("client_closed")
                self.finish(exchange)

    def pause_writing(self) -> None:
        current = self.current
        if current is not None and current.upstream is not None:
            transport = current.upstream.transport
            if transport is not None:
                transport.pause_reading()

    def resume_writing(self) -> None:
        current = self.current
        if current is not None and current.upstream is not None:
            transport = current.upstream.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    # == httptools callbacks ====================================================================

    def on_message_begin(self) -> None:
        exchange = Exchange(self)
        self.parsing = exchange
        if self.current is None:
            self.current = exchange
        else:
            self.queue.append(exchange)
            if len(self.queue) >= MAX_PIPELINE:
                self.set_buffer_full(True)
        self.header_bytes = 0
        self._set_phase(PHASE_HEADERS, self.listener.limits.request_header_timeout)

    def on_url(self, url: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        exchange.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        if exchange.prepared:
            return  # a trailer field: dropped (never forwarded)
        headers = exchange.headers
        if len(headers) >= self.listener.limits.max_header_count:
            raise DownstreamError("too many header fields", 431)
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.parsing
        assert exchange is not None
        self.requests += 1
        if self.header_bytes > self.listener.limits.max_header_bytes:
            raise DownstreamError("request header too large", 431)
        exchange.prepare(self.parser)
        if exchange.request_complete:
            self._set_phase(PHASE_NONE, None)
        else:
            self._set_phase(PHASE_BODY, self.listener.limits.client_timeout)
        if exchange is self.current:
            exchange.start()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        if self.phase == PHASE_BODY:
            self.deadline = self.loop.time() + self.listener.limits.client_timeout
        exchange.request_body(body)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        assert exchange is not None
        self.parsing = None
        if self.phase == PHASE_BODY:
            self._set_phase(PHASE_NONE, None)
        exchange.request_end()

    # == used by Exchange =======================================================================

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            self.listener.stats.bytes_out += len(data)
            transport.write(data)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            self.listener.stats.bytes_out += len(parts[1])
            transport.writelines(parts)

    def finish(self, exchange: Exchange) -> None:
        """An exchange is over (answered, failed or cancelled). Called exactly once per exchange."""
        if exchange.finished:
            return
        exchange.finished = True
        backend = exchange.backend
        if backend is not None:
            backend.release()
        self.listener.record(exchange)
        if self.closed:
            return
        if exchange is not self.current:
            return
        self.current = None
        self._after_exchange(exchange)

    def _after_exchange(self, exchange: Exchange) -> None:
        if exchange.close_after or not exchange.request_complete or (self.closing and not self.queue):
            self._close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.current = nxt
            if len(self.queue) < MAX_PIPELINE and self.read_paused_by_buffer and not nxt.buffer:
                self.set_buffer_full(False)
            if nxt.prepared:
                nxt.start()
            return
        if self.parsing is None:
            self._set_phase(PHASE_IDLE, self.listener.limits.keepalive_timeout)

    def set_upstream_paused(self, paused: bool) -> None:
        self.read_paused_by_upstream = paused
        self._update_reading()

    def set_buffer_full(self, full: bool) -> None:
        self.read_paused_by_buffer = full
        self._update_reading()

    def enter_tunnel(self, exchange: Exchange) -> None:
        self.tunnel = exchange
        self.upgrade_exchange = None
        self._set_phase(PHASE_NONE, None)

    def abort(self) -> None:
        """Close the client connection at once (RST): used when a response can't be completed."""
        if self.transport is not None and not self.closed:
            self.transport.abort()

    # == Drainable ==============================================================================

    def begin_shutdown(self) -> None:
        """Finish the exchange in flight (answered with Connection: close), then close."""
        self.closing = True
        if self.current is None and self.parsing is None and self.tunnel is None:
            self._close()

    # == internals ==============================================================================

    def _on_upgrade(self, data: bytes, upgrade: httptools.HttpParserUpgrade) -> None:
        # httptools stops at the end of an Upgrade request; what follows is tunnel payload.
        exchange = self.current if self.current is not None else self.parsing
        offset = upgrade.args[0] if upgrade.args else len(data)
        if exchange is None or exchange.upgrade is None:
            self._refuse(400, "unexpected protocol upgrade")
            return
        self.upgrade_exchange = exchange
        self.parsing = None
        rest = data[offset:]
        if rest:
            exchange.tunnel_from_client(rest)

    def _read_proxy_header(self, data: bytes) -> bytes:
        assert self.proxy_buffer is not None
        buffer = self.proxy_buffer + data
        try:
            parsed = proxy_protocol.parse(buffer)
        except proxy_protocol.ProxyProtocolError as exc:
            log.info("listener %s: bad PROXY header from %s: %s", self.listener.name, self.client_host, exc)
            self.abort()
            return b""
        if parsed is None:
            self.proxy_buffer = buffer
            return b""
        info, consumed = parsed
        self.proxy_buffer = None
        if info.source is not None:
            self.client_host, self.client_port = info.source
        if info.destination is not None:
            self.local_address = info.destination
        self.trusted = self.listener.is_trusted(self.client_host)
        self._set_phase(PHASE_IDLE, self.listener.limits.request_header_timeout)
        return buffer[consumed:]

    def _refuse(self, status: int, message: str) -> None:
        """Answer a bad request with ``status`` and close; nothing more is read."""
        log.debug("listener %s: %d for %s: %s", self.listener.name, status, self.client_host, message)
        self.listener.count_refused(status)
        exchange = self.parsing or self.current
        if exchange is not None and exchange.response_started:
            self.abort()
            return
        if exchange is not None and exchange is not self.current:
            # Pipelined behind an exchange in flight: the earlier response must come first.
            self.abort()
            return
        if exchange is not None:
            exchange.cancel("bad_request")
            exchange.status = status
            exchange.finished = True
            if exchange.backend is not None:
                exchange.backend.release()
                exchange.backend = None
            self.listener.record(exchange)
        self.current = None
        self.parsing = None
        request_id = exchange.request_id if exchange is not None else None
        self.write(error_response(status, message, close=True, request_id=request_id or None))
        self._close()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        want_paused = self.read_paused_by_upstream or self.read_paused_by_buffer
        if want_paused != self.reading_paused:
            self.reading_paused = want_paused
            if want_paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _set_phase(self, phase: int, timeout: float | None) -> None:
        self.phase = phase
        if timeout is None:
            self.deadline = _INF
            return
        deadline = self.loop.time() + timeout
        self.deadline = deadline
        timer = self.timer
        if timer is None:
            self.timer = self.loop.call_at(deadline, self._on_timer)
        elif timer.when() > deadline:
            timer.cancel()
            self.timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        deadline = self.deadline
        if deadline == _INF:
            return
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            return
        phase = self.phase
        if phase == PHASE_IDLE or phase == PHASE_PROXY_HEADER:
            self._close()
        elif phase == PHASE_HEADERS:
            self._refuse(408, "request header timeout")
        elif phase == PHASE_BODY:
            self._refuse(408, "client sent no body data in time")

    def _close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def __repr__(self) -> str:
        return (
            f"<HttpSession {self.client_host}:{self.client_port} requests={self.requests} "
            f"current={self.current!r} queued={len(self.queue)} closed={self.closed}>"
        )

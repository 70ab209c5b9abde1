"""HttpSession: the downstream (client) side of an ``http`` listener connection.

How this works:
- httptools parses the client's bytes; its callbacks only record state on the Exchange being
  parsed (``parsing``) and never raise except DownstreamError, which ``data_received`` turns into
  a 4xx answer and a close (uvicorn's rule: a parser error becomes a 400, nothing escapes).
- A request is started (routed, sent upstream) only after ``feed_data`` returns, so everything
  that arrived with its head is checked first: a request found malformed in the bytes received
  so far never reaches a backend.
- Exchanges are answered in order: ``current`` is served, the ones behind it wait in ``queue``.
  A malformed pipelined request is answered (400 ...) after the responses owed before it.
- Reading from the client is paused while the upstream can't take more request bytes, while too
  many bytes wait because no upstream is attached yet (dialing, or pipelined behind another), and
  while the client doesn't read what we write: no buffer grows without bound.
- One timer per connection enforces the phase's bound: request-header time (408), a client silent
  or slower than ``min_body_rate`` during a body (408; not counted while lbproxy itself holds the
  client back), keep-alive idleness (silent close), lingering, and closing (abort when the client
  never reads its last response). Phases move a deadline; the timer re-arms lazily: no timer
  churn per request.
- Closing while the client may still be sending (a refused request, a response that ended before
  its request body did) lingers, as nginx does: send EOF, read and drop input until the client's
  EOF, until it is quiet for LINGER_QUIET or for at most LINGER_MAX, then close. A socket closed
  with unread input answers with a RST that can destroy the response before the client reads it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools

from lbproxy.errors import DownstreamError
from lbproxy.l7.exchange import BUFFER_HIGH_WATER, REQUEST_HANDLED, Exchange
from lbproxy.l7.responses import error_response
from lbproxy.net import proxy_protocol
from lbproxy.net.bind import peer_host

if TYPE_CHECKING:
    from lbproxy.l7.listener import HttpListener
    from lbproxy.net.listener import HandshakeToken

log = logging.getLogger("lbproxy.l7")

PHASE_NONE = 0  # waiting on the backend: upstream timers apply
PHASE_IDLE = 1  # keep-alive, between requests
PHASE_HEADERS = 2  # reading a request head
PHASE_BODY = 3  # reading a request body
PHASE_PROXY_HEADER = 4  # waiting for a PROXY protocol header
PHASE_LINGER = 5  # EOF sent after a final response; dropping what the client still sends
PHASE_CLOSING = 6  # close() called; waiting for the write buffer to drain

SMALL_WRITE = 4096  # a body up to this size is joined to its head for one write()
MAX_PIPELINE = 16  # requests queued behind the one being served before reading pauses
LINGER_QUIET = 2.0  # PHASE_LINGER ends when the client sends nothing for this long (nginx: 5 s)
LINGER_MAX = 30.0  # and lasts at most this long (nginx's lingering_time)
_INF = float("inf")


class _Detached:
    """The protocol of ``_DETACHED_PARSER``: a closed session's parser, never fed."""


_DETACHED_PARSER = httptools.HttpRequestParser(_Detached())


class HttpSession(asyncio.Protocol):
    """One client connection on an ``http`` listener."""

    __slots__ = (
        "handshake_token",  # TLS listeners count handshakes that never reach connection_made
        "listener",
        "loop",
        "transport",
        "parser",
        "client_host",
        "client_port",
        "forwarded_prefix",
        "_local_address",
        "trusted",
        "current",
        "parsing",
        "queue",
        "start_pending",
        "refusal",
        "phase",
        "deadline",
        "timer",
        "timer_at",
        "arming",
        "header_bytes",
        "head_raw",
        "closing",
        "closed",
        "writable",
        "discarding",
        "linger_until",
        "writing_paused",
        "reading_paused",
        "read_paused_by_upstream",
        "read_paused_by_buffer",
        "read_paused_by_writes",
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
        self.forwarded_prefix = b""  # X-Forwarded-For and -Proto for this client, then X-Forwarded-Host's name
        self._local_address: tuple[str, int] | None = None  # read from the socket when first needed
        self.trusted = False
        self.current: Exchange | None = None
        self.parsing: Exchange | None = None
        # A list, not a deque: at most MAX_PIPELINE long, and an empty deque costs ~700 bytes
        # per connection (issue 8's idle-connection memory).
        self.queue: list[Exchange] = []
        self.start_pending = False  # ``current`` is prepared; start it once feed_data returns
        self.refusal: bytes | None = None  # error response owed after the exchanges in flight
        self.phase = PHASE_NONE
        self.deadline = _INF
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = _INF  # when ``timer`` is due (TimerHandle.when() is a call per request)
        self.arming = False  # waiting in the listener's TimerBatch for ``arm_timer``
        self.header_bytes = 0  # request line and fields of the message being parsed (exact)
        self.head_raw = 0  # raw bytes fed while a head was incomplete (guards one endless field)
        self.closing = False
        self.closed = False
        self.writable = False
        self.discarding = False  # nothing more is parsed: input is read and dropped
        self.linger_until = 0.0
        self.writing_paused = False
        self.reading_paused = False
        self.read_paused_by_upstream = False
        self.read_paused_by_buffer = False
        self.read_paused_by_writes = False
        self.tunnel: Exchange | None = None
        self.upgrade_exchange: Exchange | None = None
        self.proxy_buffer: bytes | None = None
        self.requests = 0
        self.handshake_token: HandshakeToken | None = None  # set by a TLS listener

    # == asyncio.Protocol =======================================================================

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP/TLS transport; an annotation, not cast(), which would be a call per connection.
        tcp_transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tcp_transport
        listener = self.listener
        if not listener.admit(self):
            tcp_transport.abort()
            self.closed = True
            return
        self.writable = True
        peer = transport.get_extra_info("peername")
        self._set_client(peer_host(peer), peer[1] if isinstance(peer, tuple) else 0)
        if listener.config.accept_proxy_protocol:
            if not listener.proxy_protocol_from.contains(self.client_host):
                log.info("listener %s: PROXY header from untrusted %s refused", listener.name, self.client_host)
                self.abort()
                return
            self.proxy_buffer = b""
            self._set_phase(PHASE_PROXY_HEADER, listener.limits.request_header_timeout)
            return
        self.trusted = listener.is_trusted(self.client_host)
        if not listener.claim_client(self, self.client_host):
            self.abort()  # over max_connections_per_client
            return
        # A new connection must send its first request head within request_header_timeout.
        self._set_phase(PHASE_IDLE, listener.limits.request_header_timeout)

    def data_received(self, data: bytes) -> None:
        self.listener.stats.bytes_in += len(data)
        if self.discarding:
            if self.phase == PHASE_LINGER:
                self.deadline = min(self.loop.time() + LINGER_QUIET, self.linger_until)
            return
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
        parsing = self.parsing
        if parsing is not None and not parsing.prepared:
            self.head_raw += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_upgrade(data, upgrade)
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
        if self.start_pending:
            self.start_pending = False
            current = self.current
            if current is not None and current.prepared and not current.finished:
                current.start()
        parsing = self.parsing
        if parsing is not None and not parsing.prepared:
            limits = self.listener.limits
            if self.head_raw > limits.max_header_bytes:
                self._refuse(431, "request header too large")
            elif self.phase != PHASE_HEADERS:
                self._set_phase(PHASE_HEADERS, limits.request_header_timeout)

    def eof_received(self) -> bool:
        # This pass's held writes (a response read in the same pass) must reach the transport
        # now: returning False makes the transport close itself at once (its held bytes would
        # then be skipped), and a TLS client's close_notify starts the SSL layer's shutdown
        # as soon as this returns, which drops what is written after.
        self.listener.outbox.flush()
        if self.phase == PHASE_LINGER:
            self._close()  # the client stopped sending: the linger is over
            return False
        if self.tunnel is not None:
            self.tunnel.tunnel_client_eof()  # closing the upstream side closes this one after
            return True
        if self.parsing is not None or self.upgrade_exchange is not None or self.current is None:
            # Nothing in flight, or a request cut short that can never complete.
            self._close()
            return False
        # A client that half-closes after its requests still gets the responses.
        self.closing = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.writable = False
        self.refusal = None
        self.listener.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        elif self.arming:
            self.arming = False
            self.listener.timers.discard(self)
        # The parser holds bound methods of this session: a reference cycle that only the
        # cyclic GC would free. Dropping it lets the session go as soon as the transport does
        # (issue 8: 12 objects per connection no longer left to the collector).
        self.parser = _DETACHED_PARSER
        if self.current is None and self.parsing is None and self.upgrade_exchange is None and not self.queue:
            return  # the usual end: nothing in flight
        pending = [self.current, *self.queue] if self.current is not None else list(self.queue)
        if self.parsing is not None and self.parsing not in pending:
            pending.append(self.parsing)
        if self.upgrade_exchange is not None and self.upgrade_exchange not in pending:
            pending.append(self.upgrade_exchange)
        self.queue.clear()
        for exchange in pending:
            if exchange is not None and not exchange.finished:
                exchange.cancel("client_closed")
                self.finish(exchange)

    def pause_writing(self) -> None:
        self.writing_paused = True
        current = self.current
        if current is not None and current.upstream is not None:
            current.upstream.pause_reading()
        if self.tunnel is None:
            # Responses lbproxy writes itself must not pile up for a client that doesn't read.
            self.read_paused_by_writes = True
            self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        current = self.current
        if current is not None and current.upstream is not None:
            current.upstream.resume_reading()
        if self.read_paused_by_writes:
            self.read_paused_by_writes = False
            self._update_reading()

    # == httptools callbacks ====================================================================

    def on_message_begin(self) -> None:
        exchange = Exchange(self)
        self.parsing = exchange
        if self.current is None:
            self.current = exchange
        else:
            self.queue.append(exchange)
            if len(self.queue) >= MAX_PIPELINE:
                self.update_buffer_pause()
        self.header_bytes = 0
        self.head_raw = 0
        # The request-header timer (PHASE_HEADERS) starts after feed_data if the head is still
        # incomplete then; a head that arrives whole never needs it.

    def on_url(self, url: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        exchange.url += url
        self.header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        limits = self.listener.limits
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > limits.max_header_bytes:
            raise DownstreamError("request header too large", 431)
        if exchange.prepared:
            return  # a trailer field: counted, then dropped (never forwarded)
        exchange.field_count += 1
        if exchange.field_count > limits.max_header_count:
            raise DownstreamError("too many header fields", 431)
        # llhttp drops leading whitespace but keeps trailing; a field value has neither.
        # Fields lbproxy handles itself (Host, framing, hop-by-hop, forwarding) go aside, for
        # ``prepare`` to read without a pass over every field (issue 8).
        lname = name.lower()
        if lname in REQUEST_HANDLED:
            exchange.handled.append((lname, value.rstrip(b" \t")))
        else:
            exchange.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        exchange = self.parsing
        assert exchange is not None
        self.requests += 1
        exchange.prepare(self.parser)
        if exchange.request_complete:
            self.phase = PHASE_NONE  # _set_phase(PHASE_NONE, None), inlined: once per request
            self.deadline = _INF
        else:
            self._set_phase(PHASE_BODY, self._body_timeout())
        if exchange is self.current:
            self.start_pending = True

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        if self.phase == PHASE_BODY and self.deadline != _INF:
            # Each chunk buys len/min_body_rate seconds, never more than client_timeout from now:
            # a client trickling its body gets 408 like one that went silent.
            limits = self.listener.limits
            latest = self.loop.time() + limits.client_timeout
            rate = limits.min_body_rate
            self.deadline = min(self.deadline + len(body) / rate, latest) if rate else latest
        exchange.request_body(body)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        assert exchange is not None
        self.parsing = None
        if self.phase == PHASE_BODY:
            self._set_phase(PHASE_NONE, None)
        if exchange.upgrade is not None:
            self.upgrade_exchange = exchange  # httptools raises HttpParserUpgrade next
        if exchange.request_chunked:
            exchange.request_end()
        else:
            exchange.request_complete = True  # all request_end does for a length-framed body
        if self.read_paused_by_buffer:
            self.update_buffer_pause()

    # == used by Exchange =======================================================================

    @property
    def local_address(self) -> tuple[str, int]:
        """The address the client connected to (or the PROXY header's destination).

        Read on first use: only an HTTP/1.0 request without Host and a PROXY header sent on need
        it, and asking the socket is a getsockname() syscall per connection (issue 8: one of the
        four syscalls per new connection haproxy doesn't make)."""
        address = self._local_address
        if address is None:
            sock = self.transport.get_extra_info("sockname") if self.transport is not None else None
            address = self._local_address = (peer_host(sock), sock[1] if isinstance(sock, tuple) else 0)
        return address

    # Writes go through the daemon's outbox: sent at the end of the event loop's pass, with the
    # pass's other writes (lbproxy.net.outbox: fewer wake-ups of the peers, issue 8).

    def write(self, data: bytes) -> None:
        if self.writable:
            assert self.transport is not None
            listener = self.listener
            listener.stats.bytes_out += len(data)
            listener.outbox.write(self.transport, data)

    def write_all(self, parts: list[bytes]) -> None:
        """Write several buffers with one syscall (uvloop's writelines is one writev).

        A head and a small body, the usual response, are joined and written with write():
        copying a few KiB costs less than writelines' iteration and a writev (issue 8).
        ``parts`` is the caller's no longer: the outbox may hold it until the pass ends."""
        if self.writable:
            transport = self.transport
            assert transport is not None
            listener = self.listener
            if len(parts) == 2 and len(parts[1]) <= SMALL_WRITE:
                data = parts[0] + parts[1]
                listener.stats.bytes_out += len(data)
                listener.outbox.write(transport, data)
                return
            listener.stats.bytes_out += sum(map(len, parts))
            if len(parts) == 1:
                listener.outbox.write(transport, parts[0])
            else:
                listener.outbox.writelines(transport, parts)

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        """Write a body chunk framed as ``(size line, data, CRLF)``."""
        if self.writable:
            assert self.transport is not None
            listener = self.listener
            listener.stats.bytes_out += len(parts[1])
            listener.outbox.writelines(self.transport, parts)

    def finish(self, exchange: Exchange) -> None:
        """An exchange is over (answered, failed or cancelled). Idempotent."""
        if exchange.finished:
            return
        self._account(exchange)
        if self.closed or exchange is not self.current:
            return
        self.current = None
        if self.writable:  # else closing or aborted: connection_lost cancels what is queued
            self._after_exchange(exchange)

    def set_upstream_paused(self, paused: bool) -> None:
        if paused != self.read_paused_by_upstream:
            self.read_paused_by_upstream = paused
            self._update_reading()

    def update_buffer_pause(self) -> None:
        """Pause reading while too many requests are queued or too many request bytes wait for
        an upstream connection; resume when that is no longer so."""
        receiving = self.parsing or self.upgrade_exchange
        full = len(self.queue) >= MAX_PIPELINE or (receiving is not None and receiving.buffered > BUFFER_HIGH_WATER)
        if full != self.read_paused_by_buffer:
            self.read_paused_by_buffer = full
            self._update_reading()

    def last_response(self) -> bool:
        """Whether the response being started must be the connection's last one (shutdown, or
        the client sent EOF and nothing else is queued)."""
        return self.closing and not self.queue

    def enter_tunnel(self, exchange: Exchange) -> None:
        self.tunnel = exchange
        self.upgrade_exchange = None
        self._set_phase(PHASE_NONE, None)
        self.update_buffer_pause()

    def abort(self) -> None:
        """Close the client connection at once (RST): used when a response can't be completed."""
        self.writable = False
        if self.transport is not None and not self.closed:
            self.listener.outbox.abort(self.transport)

    # == Drainable ==============================================================================

    def begin_shutdown(self) -> None:
        """Finish the exchange in flight (answered with Connection: close), then close."""
        self.closing = True
        if self.current is None and self.parsing is None and self.tunnel is None:
            self._close()

    # == internals ==============================================================================

    def _start_current(self) -> None:
        self.start_pending = False
        current = self.current
        if current is not None and current.prepared and not current.finished:
            current.start()

    def _account(self, exchange: Exchange) -> None:
        """Mark ``exchange`` finished: release its backend and count it (exactly once)."""
        exchange.finished = True
        backend = exchange.backend
        if backend is not None:
            backend.release()
        listener = self.listener
        duration = self.loop.time() - exchange.started
        route = exchange.route
        pool = exchange.pool
        if route is not None and pool is not None:
            label = backend.label if backend is not None else ""
            listener.tally.routed(route.name, pool.name, label, exchange.status, duration)
        elif exchange.status:
            listener.tally.unrouted(exchange.status)
        access_log = listener.access_log
        if access_log is not None:
            access_log.log_exchange(listener.name, exchange, duration)

    def _after_exchange(self, exchange: Exchange) -> None:
        if not exchange.request_complete:
            self._close_lingering()  # the client may still be sending this request's body
            return
        if exchange.close_after:
            self._close()
            return
        if self.queue:
            nxt = self.queue.pop(0)
            self.current = nxt
            if self.read_paused_by_buffer:
                self.update_buffer_pause()
            if nxt.prepared:
                nxt.start()
            return
        if self.refusal is not None:
            response, self.refusal = self.refusal, None
            self.write(response)
            self._close_lingering()
            return
        if self.closing:
            self._close()
            return
        if self.parsing is None:
            self._set_phase(PHASE_IDLE, self.listener.limits.keepalive_timeout)

    def _on_upgrade(self, data: bytes, upgrade: httptools.HttpParserUpgrade) -> None:
        # httptools stops at the end of an Upgrade request; what follows is tunnel payload, held
        # by the exchange until the backend answers 101 (or dropped if it doesn't).
        exchange = self.upgrade_exchange
        if exchange is None:
            self._refuse(400, "unexpected protocol upgrade")
            return
        if self.start_pending:
            self._start_current()
        offset = upgrade.args[0] if upgrade.args else len(data)
        rest = data[offset:]
        if rest and not exchange.finished:
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
            self._set_client(*info.source)
        if info.destination is not None:
            self._local_address = info.destination
        self.trusted = self.listener.is_trusted(self.client_host)
        if not self.listener.claim_client(self, self.client_host):
            self.abort()  # over max_connections_per_client
            return b""
        self._set_phase(PHASE_IDLE, self.listener.limits.request_header_timeout)
        return buffer[consumed:]

    def _set_client(self, host: str, port: int) -> None:
        self.client_host = host
        self.client_port = port
        self.forwarded_prefix = self.listener.forwarded_prefix(host)

    def _refuse(self, status: int, message: str) -> None:
        """Answer the request being parsed with ``status`` and close, after the responses owed
        to the requests before it. Nothing more is parsed: input is read and dropped."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("listener %s: %d for %s: %s", self.listener.name, status, self.client_host, message)
        self.listener.count_refused(status)
        self.discarding = True
        self._update_reading()
        bad = self.parsing
        self.parsing = None
        start_pending, self.start_pending = self.start_pending, False
        request_id: bytes | None = None
        if bad is not None:
            if bad.response_started:
                # The backend answered before the request was complete: too late for an error.
                self.abort()
                return
            request_id = bad.request_id or None
            bad.cancel("bad_request")
            bad.status = status
            if bad is self.current:
                self.current = None
            else:
                try:
                    self.queue.remove(bad)
                except ValueError:
                    pass
            if not bad.finished:
                self._account(bad)
        response = error_response(status, message, close=True, request_id=request_id)
        current = self.current
        if current is None:
            self.write(response)
            self._close_lingering()
            return
        self.refusal = response
        if start_pending:
            current.start()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        held = self.read_paused_by_upstream or self.read_paused_by_buffer
        want_paused = not self.discarding and (held or self.read_paused_by_writes)
        if want_paused != self.reading_paused:
            self.reading_paused = want_paused
            if want_paused:
                transport.pause_reading()
            else:
                transport.resume_reading()
        if self.phase == PHASE_BODY:
            # The client can't be blamed for silence while lbproxy holds it back.
            if held:
                self.deadline = _INF
            elif self.deadline == _INF:
                self._set_phase(PHASE_BODY, self.listener.limits.client_timeout)

    def _body_timeout(self) -> float | None:
        if self.read_paused_by_upstream or self.read_paused_by_buffer:
            return None
        return self.listener.limits.client_timeout

    def _set_phase(self, phase: int, timeout: float | None) -> None:
        self.phase = phase
        if timeout is None:
            self.deadline = _INF
            return
        deadline = self.loop.time() + timeout
        self.deadline = deadline
        timer = self.timer
        if timer is None:
            if not self.arming:  # armed in a batch, shortly: most connections end first
                self.arming = True
                self.listener.timers.add(self)
        elif self.timer_at > deadline:
            timer.cancel()
            self.timer = self.loop.call_at(deadline, self._on_timer)
            self.timer_at = deadline

    def arm_timer(self) -> None:
        """Create the timer for the current deadline (``TimerBatch``), unless closed since."""
        self.arming = False
        if not self.closed and self.timer is None and self.deadline != _INF:
            self.timer = self.loop.call_at(self.deadline, self._on_timer)
            self.timer_at = self.deadline

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        deadline = self.deadline
        if deadline == _INF:
            return
        if self.loop.time() < deadline:
            self.timer = self.loop.call_at(deadline, self._on_timer)
            self.timer_at = deadline
            return
        phase = self.phase
        if phase == PHASE_IDLE or phase == PHASE_PROXY_HEADER or phase == PHASE_LINGER:
            self._close()
        elif phase == PHASE_HEADERS:
            self._refuse(408, "request header timeout")
        elif phase == PHASE_BODY:
            self._refuse(408, "client sent no body data in time")
        elif phase == PHASE_CLOSING:
            self.abort()  # the client never read its last response

    def _close(self) -> None:
        """Close once the write buffer is flushed; abort if that takes longer than client_timeout.

        The close leaves with the pass's held writes (``Outbox.close_at_pass_end``): closing at
        once would flush them early, one flush per closed connection."""
        self.writable = False
        self.discarding = True  # until the close happens, what the client sends is dropped
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.listener.outbox.close_at_pass_end(transport)
            self._set_phase(PHASE_CLOSING, self.listener.limits.client_timeout)

    def _close_lingering(self) -> None:
        """Send EOF after what is written, drop input until the client's EOF (bounded by
        LINGER_QUIET and LINGER_MAX), then close."""
        transport = self.transport
        if transport is None or transport.is_closing() or not self.writable:
            return
        self.writable = False
        self.closing = True
        self.discarding = True
        self._update_reading()
        try:
            self.listener.outbox.write_eof(transport)
        except (OSError, RuntimeError):
            self._close()
            return
        self.linger_until = self.loop.time() + LINGER_MAX
        self._set_phase(PHASE_LINGER, LINGER_QUIET)

    def __repr__(self) -> str:
        return (
            f"<HttpSession {self.client_host}:{self.client_port} requests={self.requests} "
            f"phase={self.phase} current={self.current!r} queued={len(self.queue)} closed={self.closed}>"
        )

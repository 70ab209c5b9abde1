"""Exchange: one request from a client and the response relayed for it.

How this works:
- The session creates an Exchange when httptools starts parsing a request. Parser callbacks fill
  in the request; ``prepare`` (at end of headers) validates it, picks the route and builds the
  upstream request head, or records a local response (404, 417, ...).
- Exchanges of one client connection are served strictly in order (pipelining). Only the session's
  ``current`` exchange talks to a backend; the ones behind it buffer their (bounded) request bytes.
- ``start`` (when the exchange becomes current and is prepared) picks a backend and takes an idle
  upstream connection or dials one; the request head and buffered body go out on attach, later
  body chunks go straight through, re-framed (the client's framing is never forwarded verbatim).
  ``Expect: 100-continue`` is answered by lbproxy itself once an upstream connection is attached
  (and not forwarded), so uploads neither stall nor start before there is somewhere to send them.
- The upstream connection calls back ``upstream_head`` / ``upstream_body`` / ``upstream_complete``
  / ``upstream_failed``. The response is re-framed for the client too (chunked for HTTP/1.1 when
  the length is unknown, close-delimited for HTTP/1.0).
- A backend that fails before answering (connect refused or timed out, or, for an idempotent
  request whose body wasn't sent, a connection closed or reset before any response byte) is
  left for another one, up to ``retries`` (``_try_another``); a reused keep-alive connection
  that dies that way is first retried once on a fresh connection to the same backend.
- After a ``101`` the exchange becomes a tunnel: raw bytes both ways until either side closes.
- The session's ``finish`` is called exactly once per exchange; it releases the backend, counts the
  request and moves on to the next exchange or closes the connection.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from lbproxy.errors import BadResponse, DownstreamError, NoBackend, UpstreamError
from lbproxy.l7.headers import (
    FORWARDING,
    HASH,
    HOP_BY_HOP,
    connection_tokens,
    cookie_value,
    parse_fields,
    names_more_than_hop_by_hop,
    new_request_id,
    route_host,
    strip_cookie,
    valid_request_id,
)
from lbproxy.l7.responses import error_response, status_line
from lbproxy.l7.upstream import UpstreamConnection
from lbproxy.net import proxy_protocol
from lbproxy.net.connect import Dial
from lbproxy.routing.actions import choose_split, redirect_location, rewrite_path, split_cookie_header
from lbproxy.routing.paths import normalize_path
from lbproxy.routing.table import RequestView

if TYPE_CHECKING:
    import httptools

    from lbproxy.pool.pool import Pool
    from lbproxy.routing.table import Route
    from lbproxy.l7.session import HttpSession
    from lbproxy.pool.backend import Backend

log = logging.getLogger("lbproxy.l7")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
BUFFER_HIGH_WATER = 256 * 1024  # request bytes held while no upstream is attached
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_RETRY_AFTER = ((b"Retry-After", b"1"),)
_KEEP_ALIVE = ((b"Connection", b"keep-alive"),)


class Exchange:
    """One request/response cycle on a client connection."""

    __slots__ = (
        "session",
        "started",
        "url",
        "pool",
        "affinity_backend",
        "affinity_inserted",
        "hash_key",
        "set_cookies",
        "held",
        "response_limit",
        "headers",
        "handled",
        "field_count",
        "method",
        "http10",
        "keep_alive",
        "host",
        "route",
        "backend",
        "tried",
        "last_error",
        "head",
        "upstream",
        "dial",
        "prepared",
        "request_complete",
        "request_chunked",
        "expect_continue",
        "continue_sent",
        "upgrade",
        "body_bytes",
        "body_sent",
        "buffer",
        "buffered",
        "retried",
        "request_id",
        "local_response",
        "local_close",
        "status",
        "response_started",
        "response_chunked",
        "response_close_delimited",
        "response_complete",
        "close_after",
        "bytes_out",
        "finished",
        "termination",
        "tunnel_buffer",
        "tunnel_open",
    )

    def __init__(self, session: HttpSession) -> None:
        self.session = session
        self.started = session.loop.time()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []  # the fields forwarded (as received, then kept)
        self.handled: list[tuple[bytes, bytes]] = []  # (lowercased name, value) of REQUEST_HANDLED fields
        self.field_count = 0
        self.method = b""
        self.http10 = False
        self.keep_alive = True
        self.host = ""
        self.route: Route | None = None
        self.pool: Pool | None = None  # the route's pool, or the one its split drew
        self.affinity_backend: Backend | None = None  # the backend an affinity cookie names
        self.affinity_inserted = False
        self.hash_key: str | None = None  # what hashing strategies hash (client or hash_on)
        self.set_cookies: tuple[bytes, ...] = ()  # Set-Cookie values lbproxy adds to the response
        # Response bytes produced during one upstream read, written with one syscall at its end.
        self.held: list[bytes] | None = None
        self.response_limit: int | None = None  # the pool's max_response_body_bytes
        self.backend: Backend | None = None
        self.tried: tuple[Backend, ...] = ()  # backends attempted, in order (tuples: no list per request)
        self.last_error: UpstreamError | None = None
        self.head = b""
        self.upstream: UpstreamConnection | None = None
        self.dial: Dial | None = None
        self.prepared = False
        self.request_complete = False
        self.request_chunked = False
        self.expect_continue = False
        self.continue_sent = False
        self.upgrade: bytes | None = None
        self.body_bytes = 0
        self.body_sent = False  # a byte after the head went upstream: a retry can't replay it
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.retried = False
        self.request_id = b""
        self.local_response: bytes | None = None
        self.local_close = False
        self.status = 0
        self.response_started = False
        self.response_chunked = False
        self.response_close_delimited = False
        self.response_complete = False
        self.close_after = False
        self.bytes_out = 0
        self.finished = False
        self.termination = ""
        self.tunnel_buffer: list[bytes] | None = None
        self.tunnel_open = False

    # == request side (called by the session) ==================================================

    def prepare(self, parser: httptools.HttpRequestParser) -> None:
        """Validate the request head, route it and build the upstream head.

        Raises DownstreamError for a request that must be refused with a 4xx/5xx and a close
        (RFC 9112's framing and Host rules, the request-smuggling family). Records a local
        response (``respond_locally``) when no route matches or an expectation can't be met.
        """
        session = self.session
        listener = session.listener
        host_value: bytes | None = None
        host_count = 0
        content_length: bytes | None = None
        transfer_encoding: bytes | None = None
        expect: bytes | None = None
        conn_listed: list[bytes] = []
        upgrade: bytes | None = None
        xff: bytes | None = None
        xf_proto: bytes | None = None
        xf_host: bytes | None = None
        request_id: bytes | None = None
        connection_seen = False
        kept = self.headers  # the session set the handled fields apart (``handled``)
        for lname, value in self.handled:
            if lname == b"host":
                host_count += 1
                host_value = value
            elif lname == b"content-length":
                content_length = value
            elif lname == b"transfer-encoding":
                transfer_encoding = value if transfer_encoding is None else transfer_encoding + b"," + value
            elif lname == b"connection":
                conn_listed.extend(connection_tokens(value))
                connection_seen = True
            elif lname == b"upgrade":
                upgrade = value
            elif lname == b"expect":
                expect = value
            elif lname == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
            elif lname == b"x-forwarded-proto":
                xf_proto = value
            elif lname == b"x-forwarded-host":
                xf_host = value
            elif lname == b"x-request-id":
                request_id = value
            elif lname == b"forwarded" and session.trusted:
                kept.append((b"Forwarded", value))
            elif lname == b"proxy-connection":
                connection_seen = True  # llhttp reads it as Connection

        self.keep_alive = keep_alive = parser.should_keep_alive()
        # Without a Connection field llhttp keeps only HTTP/1.1 alive (it refuses versions other
        # than 0.9, 1.0, 1.1 and 2.0: lbproxy.l7.llhttp), so the version need not be asked for:
        # get_http_version() formats a string, a tenth of a µs per request (issue 8).
        if not keep_alive or connection_seen:
            version = parser.get_http_version()
            if version == "1.0":
                self.http10 = True
            elif version == "0.9":
                raise DownstreamError("invalid request line")  # llhttp's reading of a missing version
            elif version != "1.1":
                raise DownstreamError(f"unsupported HTTP version {version}", 505)
        self.method = method = parser.get_method()
        if method == b"CONNECT":
            raise DownstreamError("CONNECT is not supported", 405)

        # -- framing and Host rules (RFC 9112; the smuggling family) --
        if host_count > 1:
            raise DownstreamError("more than one Host header")
        if host_value is None:
            if not self.http10:
                raise DownstreamError("missing Host header")
            # An HTTP/1.0 client meant the address it connected to; HTTP/1.1 upstream needs a Host.
            address, port = session.local_address
            host_value = (f"[{address}]:{port}" if ":" in address else f"{address}:{port}").encode("ascii")
        else:
            host = route_host(host_value)
            if host is None:
                raise DownstreamError("invalid Host header")
            self.host = host
        if transfer_encoding is not None:
            if self.http10:
                raise DownstreamError("Transfer-Encoding on HTTP/1.0")
            codings = connection_tokens(transfer_encoding)
            if not codings or codings[-1] != b"chunked":
                raise DownstreamError("Transfer-Encoding must end with chunked")
            if len(codings) > 1:
                raise DownstreamError("unsupported transfer coding", 501)
            self.request_chunked = True
        has_body = self.request_chunked
        if content_length is not None:
            declared = int(content_length)  # digits only: httptools validated it
            limit = listener.limits.max_body_bytes
            if limit is not None and declared > limit:
                raise DownstreamError(f"request body of {declared} bytes exceeds the limit of {limit}", 413)
            content_length = b"%d" % declared
            has_body = declared > 0

        url = self.url
        if HASH in url:  # a byte value: see lbproxy.l7.headers.HASH
            raise DownstreamError("invalid request target (fragment)")
        if url[:1] != b"/":
            if url == b"*":
                if method != b"OPTIONS":
                    raise DownstreamError("invalid request target")
            else:
                # absolute-form: the authority in the target overrides Host (RFC 9112 section 3.2.2)
                scheme, sep, rest = url.partition(b"://")
                if not sep or scheme.lower() not in (b"http", b"https"):
                    raise DownstreamError("invalid request target")
                authority, slash, target_path = rest.partition(b"/")
                if not authority or route_host(authority) is None:
                    raise DownstreamError("invalid request target")
                host_value = authority
                url = slash + target_path if slash else b"/"
                self.host = route_host(authority) or ""
        if host_count == 0:  # HTTP/1.0's made-up Host (always valid)
            self.host = route_host(host_value) or ""

        # Names listed in Connection are hop-by-hop too; removing them happens before lbproxy
        # adds its own headers (Host, X-Forwarded-*, X-Request-Id, framing), so a client can't
        # strip those.
        if conn_listed:
            if b"upgrade" in conn_listed and upgrade is not None:
                if self.http10 or has_body:
                    raise DownstreamError("invalid protocol upgrade request")
                self.upgrade = upgrade
            if names_more_than_hop_by_hop(conn_listed):
                listed = set(conn_listed)
                kept = [(n, v) for n, v in kept if n.lower() not in listed]

        if request_id is not None and valid_request_id(request_id):
            self.request_id = request_id
        else:
            self.request_id = new_request_id()

        if not has_body:
            self.request_complete = True
        if expect is not None:
            if expect.lower() != b"100-continue":
                self.respond_locally(417, "only 'Expect: 100-continue' is supported")
                self.prepared = True
                return
            # An HTTP/1.0 client must not be sent a 1xx (RFC 9110 section 15.2).
            self.expect_continue = has_body and not self.http10

        limiter = listener.rate_limiter
        if limiter is not None:
            wait = limiter.allow(_client_key(session.client_host, xff if session.trusted else None), session.loop.time())
            if wait:
                self.respond_locally(
                    429, "too many requests from this client", extra=((b"Retry-After", limiter.retry_after_header(wait)),)
                )
                self.prepared = True
                return
        if listener.config.redirect_https:
            self._redirect(308, f"https://{host_value.decode('latin-1')}{url.decode('latin-1')}")
            return
        raw_path, has_query, query = url.partition(b"?")
        raw_path_text = raw_path.decode("latin-1")
        # normalize_path changes nothing without a percent-encoding or a dot segment.
        path = normalize_path(raw_path_text) if "%" in raw_path_text or "." in raw_path_text else raw_path_text
        route, view = listener.router.route(method, self.host, path, query, kept)
        if route is None:
            self.respond_locally(404, "no route for this request")
            self.prepared = True
            return
        self.route = route
        config = route.config
        if config.redirect is not None:
            if view is None:
                view = RequestView(method.decode("latin-1"), self.host, path, query.decode("latin-1"), kept)
            self._redirect(config.redirect.status, redirect_location(route, view, host_value.decode("latin-1"), listener.scheme))
            return
        if route.split:
            split_cookie = config.split_cookie
            pinned = _cookie(kept, split_cookie.name.encode()) if split_cookie is not None else None
            pool, issue = choose_split(route, pinned, listener.rng)
            if issue and split_cookie is not None:
                self.set_cookies += (split_cookie_header(split_cookie, pool.name),)
        else:
            assert route.pool is not None
            pool = route.pool
        self.pool = pool
        pool_config = pool.config
        self.response_limit = pool_config.max_response_body_bytes
        self.hash_key = session.client_host
        if pool_config.strategy == "cookie_affinity":
            name = pool_config.cookie.name.encode()
            affinity_value = _cookie(kept, name)
            if affinity_value is not None:
                self.affinity_backend = listener.affinity_for(pool).backend_for(affinity_value, pool.backends)
                kept = _without_cookie(kept, name)  # "indirect": the application never sees it
        elif pool_config.hash_on is not None:
            hash_on = pool_config.hash_on
            if hash_on.cookie is not None:
                found = _cookie(kept, hash_on.cookie.encode())
            else:
                assert hash_on.header is not None
                found = _header(kept, hash_on.header.encode())
            if found:
                self.hash_key = found

        upstream_host = host_value
        rewrite = config.rewrite
        if rewrite is not None:
            path = rewrite_path(route, path)
            if rewrite.host is not None:
                upstream_host = rewrite.host.encode("latin-1")
        if path != raw_path_text:
            url = path.encode("latin-1") + (b"?" + query if has_query else b"")
        if not route.request_actions.empty:
            kept = route.request_actions.apply(kept)

        # X-Forwarded-For and -Proto, then the name of X-Forwarded-Host (its value follows).
        if session.trusted:
            client = session.client_host.encode("ascii")
            forwarded = b"".join((
                b"X-Forwarded-For: ", xff + b", " + client if xff else client,
                b"\r\nX-Forwarded-Proto: ", xf_proto or listener.scheme_bytes, b"\r\nX-Forwarded-Host: ",
            ))  # fmt: skip
            forwarded_host = xf_host or host_value
        else:
            forwarded = session.forwarded_prefix
            forwarded_host = host_value
        if self.request_chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif content_length is not None:
            framing = b"Content-Length: " + content_length + b"\r\n"
        else:
            framing = b""
        if self.upgrade is not None:
            framing += b"Connection: upgrade\r\nUpgrade: " + self.upgrade + b"\r\n"
        # The forwarded fields are joined in C, not formatted one by one in a comprehension: a
        # browser's request keeps 14 of its 16 (hotpath.py --browser: 182.4k -> 177.9k
        # instructions per request; wrk's keeps none, and skips it).
        self.head = b"".join((
            method, b" ", url, b" HTTP/1.1\r\nHost: ", upstream_host, b"\r\n",
            b"\r\n".join(map(b": ".join, kept)) + b"\r\n" if kept else b"",
            forwarded, forwarded_host, b"\r\nX-Request-Id: ", self.request_id, b"\r\n", framing, b"\r\n",
        ))  # fmt: skip
        self.headers = kept
        self.prepared = True

    def request_body(self, chunk: bytes) -> None:
        """A piece of the (de-chunked) request body from the parser.

        Raises DownstreamError (413) beyond ``max_body_bytes``."""
        if self.finished:
            return
        self.body_bytes += len(chunk)
        limit = self.session.listener.limits.max_body_bytes
        if limit is not None and self.body_bytes > limit:
            raise DownstreamError(f"request body exceeds the limit of {limit} bytes", 413)
        upstream = self.upstream
        if upstream is not None:
            if self.request_chunked:
                upstream.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                upstream.write(chunk)
            self.body_sent = True
            upstream.last_activity = self.session.loop.time()
            return
        if self.local_response is not None or self.route is None:
            return  # answered locally; the body is read and dropped
        if self.request_chunked:
            self.buffer += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
        else:
            self.buffer.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > BUFFER_HIGH_WATER and not self.session.read_paused_by_buffer:
            self.session.update_buffer_pause()

    def request_end(self) -> None:
        """The parser saw the end of the request message."""
        self.request_complete = True
        if self.finished or not self.request_chunked or self.route is None or self.local_response is not None:
            return
        upstream = self.upstream
        if upstream is not None:
            upstream.write(LAST_CHUNK)
            self.body_sent = True
        else:
            self.buffer.append(LAST_CHUNK)

    def start(self) -> None:
        """Called once, when this exchange is prepared and first in line."""
        if self.local_response is not None:
            self._write_local()
            return
        self._dispatch()

    def waiting_on_client(self) -> bool:
        """Whether the request body is incomplete and lbproxy isn't the one holding it back:
        the client's own timer (``client_timeout``) bounds that wait, not the backend's."""
        return not self.request_complete and not self.session.read_paused_by_upstream

    # == backend selection and connection ======================================================

    def _dispatch(self) -> None:
        route = self.route
        pool = self.pool
        assert route is not None and pool is not None
        backend = None
        retries = route.config.retries if route.config.retries is not None else pool.config.retries
        if len(self.tried) <= retries:
            preferred = self.affinity_backend
            if preferred is not None and preferred.available and preferred not in self.tried:
                backend = preferred
            else:
                backend = pool.pick(self.hash_key, self.tried)
                if backend is not None and pool.config.strategy == "cookie_affinity":
                    # No (usable) cookie: pin the client to what it got ("insert"), re-issuing it
                    # when its backend was down, draining or gone.
                    cookie = self.session.listener.affinity_for(pool).set_cookie_header_value(backend)
                    if not self.affinity_inserted:
                        self.set_cookies += (cookie,)
                    else:
                        self.set_cookies = (*self.set_cookies[:-1], cookie)
                    self.affinity_inserted = True
        if backend is None:
            error = self.last_error or NoBackend(f"no available backend in pool {pool.name}")
            self._fail(error)
            return
        if self.tried:
            pool.retries_total += 1  # another attempt after a failed one
        self.tried += (backend,)
        backend.acquire()
        self.backend = backend
        # A connection that sent a PROXY header names its client: never reused, always dialed.
        conn = None
        if backend.config.proxy_protocol is None and pool.config.proxy_protocol is None:
            conn = self.session.listener.upstreams.for_backend(backend, pool.config).take()
        if conn is not None:
            self._attach(conn)
        else:
            self._dial(backend)

    def _dial(self, backend: Backend) -> None:
        pool = self.pool
        assert pool is not None
        conns = self.session.listener.upstreams.for_backend(backend, pool.config)
        self.dial = Dial(
            self.session.loop,
            backend.host,
            backend.port,
            lambda: UpstreamConnection(conns),
            pool.config.connect_timeout,
            self._on_dialed,
            ssl=self.session.listener.upstream_tls(pool),
            server_hostname=_server_name(pool, backend),
            durations=pool.connect_durations,
        )

    def _on_dialed(self, conn: UpstreamConnection | None, error: UpstreamError | None) -> None:
        self.dial = None
        if self.finished:
            if conn is not None:
                conn.close()
            return
        if conn is None:
            assert error is not None
            self._try_another(error)
            return
        if self._sends_proxy_header():
            conn.dirty = True  # the header names this client: never reuse for another
            assert conn.transport is not None
            session = self.session
            version = self._proxy_protocol_version()
            build = proxy_protocol.build_v2 if version == "v2" else proxy_protocol.build_v1
            conn.write(build((session.client_host, session.client_port), session.local_address))
        self._attach(conn)

    def _try_another(self, error: UpstreamError) -> None:
        """The current backend failed before answering (``error``): count it against the
        backend, and dispatch again, to a backend not tried yet, within ``retries``."""
        backend = self.backend
        assert backend is not None
        backend.note_failure(error.kind)
        backend.release()
        self.backend = None
        self.last_error = error
        self._dispatch()

    def _proxy_protocol_version(self) -> str | None:
        assert self.pool is not None and self.backend is not None
        return self.backend.config.proxy_protocol or self.pool.config.proxy_protocol

    def _sends_proxy_header(self) -> bool:
        return self._proxy_protocol_version() is not None

    def _attach(self, conn: UpstreamConnection) -> None:
        assert self.route is not None and self.pool is not None
        session = self.session
        self.upstream = conn
        timeout = self.route.config.timeout
        conn.attach(self, timeout if timeout is not None else self.pool.config.response_timeout)
        if session.writing_paused:
            conn.pause_reading()
        buffer = self.buffer
        if buffer:
            conn.writelines((self.head, *buffer))
            self.body_sent = True
            self.buffer = []
            self.buffered = 0
            if session.read_paused_by_buffer:
                session.update_buffer_pause()
        else:
            conn.write(self.head)
        if self.expect_continue and not self.continue_sent and not self.request_complete:
            self.continue_sent = True
            session.write(CONTINUE)

    # == response side (called by UpstreamConnection) ==========================================

    def upstream_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """A 1xx (not 101) response: relay it to HTTP/1.1 clients. A 100 is never relayed:
        lbproxy answers ``Expect: 100-continue`` itself and doesn't forward it."""
        if self.http10 or self.finished or status == 100:
            return
        parts = [status_line(status)]
        for name, value in headers:
            if name.lower() not in _RESPONSE_HANDLED:  # a 1xx has no content: no framing fields
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        self.session.write(b"".join(parts))

    def upstream_head(self, status: int, head: bytes) -> bool:
        """The final response head (or a validated 101) arrived: relay it, re-framed. ``head`` is
        the raw status line and fields as received (validated by httptools), each ending CRLF.

        Returns True when the response has no body. Raises BadResponse when the response can't
        be relayed faithfully (a transfer coding other than chunked)."""
        self.status = status
        if self.backend is not None:
            self.backend.note_status(status)
        if self.finished:
            return True
        if status >= 200 and status != 204 and status != 304 and self.method != b"HEAD" and not self.set_cookies:
            route = self.route
            if (route is None or route.response_actions.empty) and self._relay_plain_head(status, head):
                return False
        return self._relay_head(status, head, parse_fields(head))

    def _relay_plain_head(self, status: int, head: bytes) -> bool:
        """The fast path of ``upstream_head``, for the usual response: it has a body and, of the
        fields lbproxy must handle, carries at most one Content-Length (kept as it is) and one
        Connection naming only keep-alive or close. The head is relayed as bytes, never split
        into fields (issue 8: about 2 µs less per response than the general path's per-field
        loop): the backend's status line and fields as received, its Connection field kept when
        it says keep-alive and lbproxy keeps the client connection alive (true of this hop
        too), cut out otherwise. Returns False, having done nothing, for any other response,
        which the general path then relays."""
        # A backend connection usually sends the same head again and again (only the Date
        # changes, once a second): the verdict on the last one is kept on the connection, and
        # comparing bytes costs a tenth of scanning them (issue 8: -0.6 µs per response).
        upstream = self.upstream
        if upstream is not None and head == upstream.plain_head:
            verdict = upstream.plain_verdict
        else:
            verdict = _plain_verdict(head)
            if upstream is not None:
                upstream.plain_head = head
                upstream.plain_status = status
                upstream.plain_verdict = verdict
        if verdict is None:
            return False
        length, connection, without_connection, status_line_kept = verdict
        session = self.session
        close = not self.keep_alive or (session.closing and not session.queue) or self.upgrade is not None
        framing = b""
        if length is None:
            self.response_close_delimited = True
            if self.http10:
                close = True  # no way to frame an unknown length for HTTP/1.0 but closing
            else:
                self.response_chunked = True
                framing = b"Transfer-Encoding: chunked\r\n"
        if close:
            framing += b"Connection: close\r\n"
        elif self.http10:
            framing += b"Connection: keep-alive\r\n"
        if connection is not None and (close or self.http10 or connection != b"keep-alive"):
            start, end = without_connection
            head = head[:start] + head[end:]
        if not status_line_kept:
            head = status_line(status) + head[head.find(b"\r\n") + 2 :]
        self.close_after = close
        self.response_started = True
        # Held, not written: the body bytes parsed from the same upstream read join it, so a
        # small response costs one write() instead of two (issue 8: 5.1 -> 4.1 syscalls/request).
        self.held = [b"".join((head, b"X-Request-Id: ", self.request_id, b"\r\n", framing, b"\r\n"))]
        return True

    def _relay_head(self, status: int, head: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
        """The general path of ``upstream_head``, field by field."""
        no_body = status < 200 or status == 204 or status == 304 or self.method == b"HEAD"
        content_length: bytes | None = None
        transfer_encoding: bytes | None = None
        listed: list[bytes] = []
        upgrade: bytes | None = None
        kept: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lname = name.lower()
            if lname in _RESPONSE_HANDLED:  # hop-by-hop and framing, re-made below; X-Request-Id: ours
                if lname == b"content-length":
                    content_length = value
                elif lname == b"connection":
                    listed.extend(connection_tokens(value))
                elif lname == b"transfer-encoding":
                    transfer_encoding = value if transfer_encoding is None else transfer_encoding + b"," + value
                elif lname == b"upgrade":
                    upgrade = value
                continue
            kept.append((name, value))
        if listed and names_more_than_hop_by_hop(listed):
            drop = set(listed)
            kept = [(n, v) for n, v in kept if n.lower() not in drop]
        route = self.route
        if route is not None and not route.response_actions.empty:
            kept = route.response_actions.apply(kept)
        if self.set_cookies:
            for cookie in self.set_cookies:
                kept.append((b"Set-Cookie", cookie))
            if self.affinity_inserted:
                kept = _uncacheable(kept)  # haproxy's "nocache": a cache must not pin everyone
        chunked = False
        if transfer_encoding is not None and not no_body:
            if connection_tokens(transfer_encoding) != [b"chunked"]:
                raise BadResponse(f"unsupported Transfer-Encoding from backend: {transfer_encoding!r}")
            chunked = True

        session = self.session
        tunnel = status == 101  # UpstreamConnection lets a 101 through only for an upgrade
        close = not self.keep_alive or session.last_response() or (self.upgrade is not None and not tunnel)
        if no_body:
            if content_length is not None and (self.method == b"HEAD" or status == 304):
                kept.append((b"Content-Length", content_length))
        elif content_length is not None and not chunked:
            kept.append((b"Content-Length", b"%d" % int(content_length)))
        else:
            self.response_close_delimited = not chunked
            if self.http10:
                close = True  # no way to frame an unknown length for HTTP/1.0 but closing
            else:
                self.response_chunked = True
                kept.append((b"Transfer-Encoding", b"chunked"))
        self.close_after = close or tunnel

        # The backend's status line (its reason phrase too), unless it is not HTTP/1.1 or not clean.
        relayable = _RELAYABLE_STATUS_LINE.match(head) is not None
        parts = [head[: head.find(b"\r\n") + 2] if relayable else status_line(status)]
        for name, value in kept:
            parts += (name, b": ", value, b"\r\n")
        parts += (b"X-Request-Id: ", self.request_id, b"\r\n")
        if tunnel:
            parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade or self.upgrade or b"", b"\r\n")
        elif close:
            parts.append(b"Connection: close\r\n")
        elif self.http10:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self.response_started = True
        # Held, not written: the body bytes parsed from the same upstream read join it, so a
        # small response costs one write() instead of two (issue 8: 5.1 -> 4.1 syscalls/request).
        self.held = [b"".join(parts)]
        return no_body

    def upstream_body(self, chunk: bytes) -> None:
        self.bytes_out += len(chunk)
        limit = self.response_limit
        if limit is not None and self.bytes_out > limit:
            raise BadResponse(f"response body longer than max_response_body_bytes ({limit})")
        held = self.held
        if held is not None:
            if self.response_chunked:
                held += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
            else:
                held.append(chunk)
        elif self.response_chunked:
            self.session.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        else:
            self.session.write(chunk)

    def flush_held(self) -> None:
        """Write what the last upstream read produced, in one go (called after each read)."""
        held = self.held
        if held is not None:
            self.held = None
            self.session.write_all(held)

    def upstream_complete(self) -> None:
        """The response ended cleanly (the connection was already pooled or closed)."""
        self.upstream = None
        if self.finished:
            return
        held = self.held
        if held is not None:
            self.held = None
            if self.response_chunked:
                held.append(LAST_CHUNK)
            self.session.write_all(held)
        elif self.response_chunked:
            self.session.write(LAST_CHUNK)
        self.response_complete = True
        self.session.finish(self)

    def upstream_failed(self, error: UpstreamError, unanswered: bool, reused: bool = False) -> None:
        """The upstream connection broke or timed out while serving this exchange.

        ``unanswered``: the backend closed or reset the connection before any byte of a
        response, so an idempotent request whose body was not sent can be sent again (nginx's
        ``proxy_next_upstream error``). On a ``reused`` connection the backend most likely
        closed it while idle: the request goes once more to the same backend, on a fresh
        connection. On a fresh one the backend itself failed (stopped, crashed, restarting):
        the request goes to another backend, within ``retries``, as after a connect failure."""
        self.upstream = None
        if self.finished:
            return
        if unanswered and not self.body_sent and self.method in IDEMPOTENT:
            assert self.backend is not None and self.pool is not None
            if not reused:
                self._try_another(error)
                return
            if not self.retried:
                self.retried = True
                self.pool.retries_total += 1
                self._dial(self.backend)
                return
        if self.backend is not None:
            self.backend.note_failure(error.kind)
        self._fail(error)

    def upstream_pause_writing(self) -> None:
        self.session.set_upstream_paused(True)

    def upstream_resume_writing(self) -> None:
        self.session.set_upstream_paused(False)

    # == tunnels (Upgrade / 101) ================================================================

    def tunnel_start(self, extra: bytes) -> None:
        """The backend answered 101: relay raw bytes both ways from now on."""
        self.flush_held()  # the 101 head goes out first
        self.tunnel_open = True
        self.session.enter_tunnel(self)
        if extra:
            self.tunnel_from_upstream(extra)
        pending = self.tunnel_buffer
        self.tunnel_buffer = None
        self.buffered = 0
        if pending and self.upstream is not None and self.upstream.transport is not None:
            self.upstream.writelines(pending)
        self.session.update_buffer_pause()

    def tunnel_from_client(self, data: bytes) -> None:
        upstream = self.upstream
        if self.tunnel_open and upstream is not None and upstream.transport is not None:
            upstream.write(data)
            return
        if self.finished:
            return
        if self.tunnel_buffer is None:
            self.tunnel_buffer = []
        self.tunnel_buffer.append(data)
        self.buffered += len(data)
        if self.buffered > BUFFER_HIGH_WATER:
            self.session.update_buffer_pause()

    def tunnel_from_upstream(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.session.write(data)

    def tunnel_client_eof(self) -> None:
        """The client closed its side of the tunnel: close the upstream after what it was sent."""
        upstream = self.upstream
        if upstream is not None:
            upstream.close()

    def tunnel_closed(self, exc: Exception | None) -> None:
        self.upstream = None
        self.termination = "tunnel_closed"
        if not self.finished:
            self.session.finish(self)

    # == endings ================================================================================

    def respond_locally(
        self, status: int, message: str, *, close: bool = False, extra: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        """Answer with a short error page of lbproxy's own (now, or when this exchange's turn comes)."""
        self.status = status
        session = self.session
        self.local_close = close = (
            close or not self.keep_alive or session.last_response() or self.upgrade is not None
        )
        if status == 503:
            extra = extra + _RETRY_AFTER
        if self.http10 and not close:
            extra += _KEEP_ALIVE
        self.local_response = error_response(
            status, message, close=close, request_id=self.request_id or None, extra_headers=extra
        )

    def _write_local(self) -> None:
        assert self.local_response is not None
        self.response_started = True
        self.close_after = self.local_close
        self.session.write(self.local_response)
        self.response_complete = True
        self.session.finish(self)

    def _fail(self, error: UpstreamError) -> None:
        self.termination = error.kind
        if self.response_started and self.held is None:
            self.session.abort()  # too late for an error page: the client sees a cut response
            if not self.finished:
                self.session.finish(self)
            return
        # Nothing reached the client yet (a head still held with the read's body bytes is
        # dropped): it gets an error response instead of a cut one. The request body may be
        # half sent: the session closes (lingering) unless it was complete.
        self.held = None
        self.response_started = self.response_chunked = self.response_close_delimited = False
        self.bytes_out = 0
        self.respond_locally(error.status, str(error), close=not self.request_complete)
        self._write_local()

    def cancel(self, reason: str) -> None:
        """The client went away or the session is aborting: drop upstream work."""
        self.termination = self.termination or reason
        if self.dial is not None:
            self.dial.cancel()
            self.dial = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.detach()
            upstream.dirty = True
            upstream.abort()

    def _redirect(self, status: int, location: str) -> None:
        """Answer with a redirect of lbproxy's own (a route's ``redirect``, or ``redirect_https``)."""
        self.status = status
        self.local_close = not self.keep_alive or self.session.closing or not self.request_complete
        body = f"{status} redirect to {location}\n".encode("utf-8", "replace")
        parts = [
            status_line(status),
            b"Location: ", location.encode("latin-1", "replace"), b"\r\n",
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"X-Request-Id: ", self.request_id, b"\r\n",
        ]  # fmt: skip
        if self.local_close:
            parts.append(b"Connection: close\r\n")
        parts += (b"\r\n", b"" if self.method == b"HEAD" else body)
        self.local_response = b"".join(parts)
        self.prepared = True

    def __repr__(self) -> str:
        return (
            f"<Exchange {self.method.decode('latin-1')} {self.url[:60].decode('latin-1')!r} "
            f"status={self.status} backend={self.backend.label if self.backend else None} "
            f"finished={self.finished}>"
        )


# Request fields handled by name in ``prepare`` besides hop-by-hop and forwarding ones.
_SPECIAL = frozenset({b"host", b"content-length", b"expect"})
REQUEST_HANDLED = HOP_BY_HOP | FORWARDING | _SPECIAL
# Response fields never relayed as received: hop-by-hop, the framing (re-made) and X-Request-Id.
_RESPONSE_HANDLED = HOP_BY_HOP | {b"content-length", b"x-request-id"}
# The same fields found in a lowercased raw head (httptools allows no space before the colon).
_RESPONSE_SPECIAL = re.compile(b"\\r\\n(" + b"|".join(sorted(_RESPONSE_HANDLED)) + b"):[ \\t]*([^\\r]*)")
PlainVerdict = tuple[int | None, bytes | None, tuple[int, int], bool]  # see _plain_verdict
# A status line relayed as the backend wrote it: HTTP/1.1, and a reason phrase of the characters
# RFC 9112 allows (llhttp also lets NUL, DEL and other controls through, and a missing space).
_RELAYABLE_STATUS_LINE = re.compile(b"HTTP/1\\.1 [0-9]{3} [\t\x20-\x7e\x80-\xff]*\r\n")


def _plain_verdict(head: bytes) -> PlainVerdict | None:
    """``(Content-Length, Connection, (start, end), status line kept)`` of a raw response head:
    the length as a number and the Connection value (None where absent), the slice that cuts
    the Connection line out (``head[:start] + head[end:]``), and whether the status line may be
    relayed as it is (``_RELAYABLE_STATUS_LINE``); when, of the fields lbproxy handles, it has
    at most one of each and Connection names only keep-alive or close. None when the head needs
    the general, field-by-field path."""
    length: int | None = None
    connection: bytes | None = None
    lower = head.lower()
    for name, value in _RESPONSE_SPECIAL.findall(lower):
        if name == b"content-length" and length is None:
            length = int(value)  # httptools has validated it: digits
        elif name == b"connection" and connection is None:
            connection = value.rstrip(b" \t")
            if connection != b"keep-alive" and connection != b"close":
                return None  # it lists more fields to drop
        else:
            return None
    cut = (0, 0)
    if connection is not None:
        at = lower.find(b"\r\nconnection:")
        cut = (at + 2, lower.find(b"\r\n", at + 13) + 2)
    return length, connection, cut, _RELAYABLE_STATUS_LINE.match(head) is not None


def _cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of cookie ``name`` in the request's Cookie headers, or None."""
    for header, value in headers:
        if header.lower() == b"cookie":
            found = cookie_value(value, name)
            if found is not None:
                return found.decode("latin-1")
    return None


def _without_cookie(headers: list[tuple[bytes, bytes]], name: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` with cookie ``name`` taken out of every Cookie header (empty ones dropped)."""
    out: list[tuple[bytes, bytes]] = []
    for header, value in headers:
        if header.lower() == b"cookie":
            value = strip_cookie(value, name)
            if not value:
                continue
        out.append((header, value))
    return out


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for header, value in headers:
        if header.lower() == name:
            return value.decode("latin-1")
    return None


def _uncacheable(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Mark a response that sets an affinity cookie ``Cache-Control: private`` unless it already
    forbids shared caching (``private`` or ``no-store``)."""
    for name, value in headers:
        if name.lower() == b"cache-control":
            lowered = value.lower()
            if b"private" in lowered or b"no-store" in lowered:
                return headers
    kept = [(n, v) for n, v in headers if n.lower() != b"cache-control"]
    kept.append((b"Cache-Control", b"private"))
    return kept


def _server_name(pool: Pool, backend: Backend) -> str | None:
    """SNI (and the verified name) for TLS to ``backend``: the pool's server_name or its host."""
    tls = pool.config.tls
    if tls is None:
        return None
    return tls.server_name or backend.host


def _client_key(peer: str, xff: bytes | None) -> str:
    """The client a request counts against: the nearest X-Forwarded-For entry when the peer is a
    trusted proxy (the address that proxy saw), else the peer (already the PROXY address)."""
    if xff:
        nearest = xff.rsplit(b",", 1)[-1].strip()
        if nearest:
            return nearest.decode("latin-1")
    return peer

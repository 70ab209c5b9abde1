"""Header rules for the HTTP proxy: pure functions over lists of ``(name, value)`` byte pairs.

Hop-by-hop headers (RFC 9110 section 7.6.1) are removed in both directions: ``Connection`` and
every name it lists, plus ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Transfer-Encoding``,
``Upgrade`` (re-added only when tunnelling) and ``Trailer``. lbproxy re-frames bodies itself, so
the client's framing is never forwarded verbatim. Headers lbproxy sets itself (``Host``,
``X-Forwarded-*``, ``X-Request-Id``, the framing) are added after the ``Connection``-listed names
are stripped, so a client can't use ``Connection:`` to remove them.
"""

from __future__ import annotations

import itertools
import os
import re

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
    }
)

# Headers lbproxy itself sets on the upstream request; the client's copies are replaced (or, from a
# trusted proxy, extended) and can never be removed through Connection.
FORWARDING: frozenset[bytes] = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"forwarded"}
)

_REQUEST_ID_OK = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")
# RFC 3986 authority without userinfo: an IP-literal or a reg-name (possibly empty), then a port.
_HOST_OK = re.compile(rb"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?$")
# Byte values, for ``in`` tests on bytes: ``COMMA in value`` is a memchr, where ``b"," in value``
# first tries the operand as an integer, and that raises and clears a TypeError inside CPython
# 3.11 every time (callgrind: about 1,800 instructions, 0.22 µs against 0.02; issue 8).
COMMA = ord(",")
HASH = ord("#")

_id_format = os.urandom(6).hex().encode("ascii") + b"-%x"
_id_counter = itertools.count(1)


def parse_fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """The ``(name, value)`` fields of a raw head that httptools has validated (status or
    request line first, each line ending CRLF): values without surrounding whitespace."""
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[1:]:
        if line:
            name, _, value = line.partition(b":")
            fields.append((name, value.strip(b" \t")))
    return fields


def connection_tokens(value: bytes) -> list[bytes]:
    """The lowercased, stripped tokens of a ``Connection`` header value."""
    if COMMA not in value:  # the usual single token ("keep-alive", "close"): no list to split
        token = value.strip().lower()
        return [token] if token else []
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def names_more_than_hop_by_hop(tokens: list[bytes]) -> bool:
    """Whether Connection ``tokens`` list a field that isn't hop-by-hop anyway ("keep-alive" and
    "upgrade" don't): only then is there anything more to strip."""
    for token in tokens:
        if token not in HOP_BY_HOP:
            return True
    return False


def valid_request_id(value: bytes) -> bool:
    """Whether a client-supplied ``X-Request-Id`` is safe to keep (printable token, <= 128)."""
    return _REQUEST_ID_OK.match(value) is not None


def valid_host(value: bytes) -> bool:
    """Whether ``value`` is a syntactically valid ``Host`` (or absolute-form authority): no
    whitespace, userinfo or other characters a backend might read differently from us."""
    return _HOST_OK.match(value) is not None


def new_request_id() -> bytes:
    """A process-unique request id: a random per-process prefix and a counter (no syscalls)."""
    return _id_format % next(_id_counter)


def strip_cookie(value: bytes, name: bytes) -> bytes:
    """``value`` (a Cookie header) without the cookie ``name``; b'' if nothing is left."""
    kept = [
        part.strip()
        for part in value.split(b";")
        if part.strip() and part.strip().split(b"=", 1)[0].strip() != name
    ]
    return b"; ".join(kept)


def cookie_value(value: bytes, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a ``Cookie`` header value, or None."""
    for part in value.split(b";"):
        key, sep, val = part.strip().partition(b"=")
        if sep and key.strip() == name:
            return val.strip()
    return None


_route_hosts: dict[bytes, str | None] = {}
_ROUTE_HOSTS_MAX = 1024


def route_host(value: bytes) -> str | None:
    """The host a ``Host`` value (or absolute-form authority) routes on, lowercased without port
    or brackets; None when ``value`` isn't a valid Host (``valid_host``).

    Memoised: a proxy sees the same few Host values over and over, and validating and
    formatting one costs more than the dict lookup (issue 8's hot path: -0.8 µs per request).
    The memo is bounded; clients sending endless distinct hosts just keep it cycling."""
    try:
        return _route_hosts[value]
    except KeyError:
        pass
    host = format_host_header(value).decode("latin-1") if valid_host(value) else None
    if len(_route_hosts) >= _ROUTE_HOSTS_MAX:
        _route_hosts.clear()
    _route_hosts[value] = host
    return host


def format_host_header(host: bytes) -> bytes:
    """The host part of a Host header value (port and brackets removed), lowercased."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[1:end] if end > 0 else host
    colon = host.rfind(b":")
    return host[:colon] if colon >= 0 else host

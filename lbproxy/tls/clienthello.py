"""Reading the server name (SNI) from a TLS ClientHello without terminating TLS. Pure.

Only what routing needs is parsed: the record header, the handshake header, and the extensions
of the ClientHello up to ``server_name`` (RFC 6066 section 3). The bytes are not changed: the
splicer forwards them untouched to the chosen backend (TLS passthrough).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

MAX_HELLO = 16384 + 5  # one TLS record; a ClientHello spanning several records is refused


class NotTls(ValueError):
    """The bytes are not a TLS ClientHello (or one we can't read)."""


def read_sni(data: bytes) -> tuple[bool, str | None]:
    """``(complete, server_name)``.

    ``complete`` is False while more bytes are needed; then ``server_name`` is None. A complete
    ClientHello without SNI gives ``(True, None)``. Raises NotTls for anything else.
    """
    if len(data) < 5:
        if data and data[0] != 0x16:
            raise NotTls("not a TLS handshake record")
        return False, None
    content_type, major, _minor, length = data[0], data[1], data[2], int.from_bytes(data[3:5], "big")
    if content_type != 0x16 or major != 3:
        raise NotTls("not a TLS handshake record")
    if length > MAX_HELLO - 5 or length < 4:
        raise NotTls("TLS record length out of range")
    if len(data) < 5 + length:
        return False, None
    body = data[5 : 5 + length]
    if body[0] != 0x01:
        raise NotTls("first handshake message is not a ClientHello")
    hello_length = int.from_bytes(body[1:4], "big")
    if hello_length + 4 > len(body):
        raise NotTls("ClientHello spans several records")
    hello = body[4 : 4 + hello_length]
    return True, _server_name(hello)


def _server_name(hello: bytes) -> str | None:
    pos = 2 + 32  # client_version, random
    pos = _skip(hello, pos, 1)  # session_id
    pos = _skip(hello, pos, 2)  # cipher_suites
    pos = _skip(hello, pos, 1)  # compression_methods
    if pos == len(hello):
        return None  # no extensions
    end = pos + 2 + _int(hello, pos, 2)
    if end > len(hello):
        raise NotTls("extensions overflow the ClientHello")
    pos += 2
    while pos + 4 <= end:
        ext_type = _int(hello, pos, 2)
        ext_len = _int(hello, pos + 2, 2)
        start = pos + 4
        if start + ext_len > end:
            raise NotTls("extension overflows")
        if ext_type == 0:
            return _parse_server_name_list(hello[start : start + ext_len])
        pos = start + ext_len
    return None


def _parse_server_name_list(ext: bytes) -> str | None:
    if len(ext) < 2:
        raise NotTls("short server_name extension")
    list_end = 2 + _int(ext, 0, 2)
    if list_end > len(ext):
        raise NotTls("server_name list overflows")
    pos = 2
    while pos + 3 <= list_end:
        name_type = ext[pos]
        name_len = _int(ext, pos + 1, 2)
        start = pos + 3
        if start + name_len > list_end:
            raise NotTls("server name overflows")
        if name_type == 0:
            raw = ext[start : start + name_len]
            try:
                name = raw.decode("ascii")
            except UnicodeDecodeError as exc:
                raise NotTls("server name is not ASCII") from exc
            if not name or any(c in name for c in " /\\\x00") or len(name) > 253:
                raise NotTls("invalid server name")
            return name.lower().rstrip(".")
        pos = start + name_len
    return None


def _int(data: bytes, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise NotTls("truncated ClientHello")
    return int.from_bytes(data[pos : pos + size], "big")


def _skip(data: bytes, pos: int, size: int) -> int:
    length = _int(data, pos, size)
    pos += size + length
    if pos > len(data):
        raise NotTls("truncated ClientHello")
    return pos


def match_server_name(name: str | None, patterns: Sequence[tuple[str, T]]) -> T | None:
    """The target of the first pattern that matches ``name`` (exact, or ``*.example.com``)."""
    if name is None:
        return None
    for pattern, target in patterns:
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]) and name != pattern[2:]:
                return target
        elif name == pattern:
            return target
    return None

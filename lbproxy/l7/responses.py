"""Responses lbproxy writes itself: precomputed status lines and short error pages."""

from __future__ import annotations

from http import HTTPStatus

_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()
}


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, precomputed for every registered status."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d Unknown\r\n" % status
    return line


def reason(status: int) -> str:
    return _REASONS.get(status, b"Unknown").decode("ascii")


def error_response(
    status: int,
    message: str,
    *,
    close: bool,
    request_id: bytes | None = None,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A complete response with a short ``text/plain`` body saying what went wrong."""
    body = f"{status} {reason(status)}: {message}\n".encode("utf-8", "replace")
    parts = [
        status_line(status),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Cache-Control: no-store\r\n",
    ]
    if request_id:
        parts.append(b"X-Request-Id: " + request_id + b"\r\n")
    for name, value in extra_headers:
        parts.append(name + b": " + value + b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)

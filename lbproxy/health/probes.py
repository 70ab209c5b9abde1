"""Active health probes: one TCP connect, or one HTTP request. Each returns ``(ok, detail)``.

A probe never raises for a failed check; ``detail`` says what happened in a few words, used in
logs ("DOWN after 3 failed checks: connection refused") and /status.
"""

from __future__ import annotations

import asyncio
import errno
import os

import httptools

from lbproxy.config.model import HealthCheckConfig

MAX_BODY = 64 * 1024


async def tcp_probe(host: str, port: int, timeout: float, preamble: bytes = b"") -> tuple[bool, str]:
    """Succeeds when a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
            if preamble:
                writer.write(preamble)
                await writer.drain()
        return True, "connected"
    except TimeoutError:
        return False, f"timeout after {timeout:g}s"
    except OSError as exc:
        return False, _describe(exc)
    finally:
        if writer is not None:
            writer.close()


def _describe(exc: OSError) -> str:
    """A few words for a failed connect, the same on uvloop and asyncio's loop."""
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return exc.strerror or type(exc).__name__


class _ResponseReader:
    """httptools callbacks collecting one response (status and a bounded body)."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False
        self.headers_done = False

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        if len(self.body) < MAX_BODY:
            self.body += body[: MAX_BODY - len(self.body)]

    def on_message_complete(self) -> None:
        self.done = True


async def http_probe(
    host: str, port: int, config: HealthCheckConfig, preamble: bytes = b""
) -> tuple[bool, str]:
    """Succeeds when ``METHOD PATH`` gets an expected status (and body substring) in time."""
    writer: asyncio.StreamWriter | None = None
    host_header = config.host or (f"[{host}]" if ":" in host else host) + f":{port}"
    request = (
        f"{config.method} {config.path} HTTP/1.1\r\nHost: {host_header}\r\n"
        "User-Agent: lbproxy-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    reader_state = _ResponseReader()
    parser = httptools.HttpResponseParser(reader_state)
    try:
        async with asyncio.timeout(config.timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(preamble + request)
            while not reader_state.done:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed_data(data)
                if reader_state.headers_done and config.expect_body is None:
                    break
                if len(reader_state.body) >= MAX_BODY:
                    break
    except TimeoutError:
        return False, f"timeout after {config.timeout:g}s"
    except httptools.HttpParserError as exc:
        return False, f"malformed response: {exc}"
    except OSError as exc:
        return False, _describe(exc)
    finally:
        if writer is not None:
            writer.close()
    if not reader_state.headers_done:
        return False, "no response"
    status = parser.get_status_code()
    if not any(low <= status <= high for low, high in config.expect_status):
        return False, f"status {status}"
    if config.expect_body is not None and config.expect_body.encode() not in reader_state.body:
        return False, f"status {status} but body lacks {config.expect_body!r}"
    return True, f"status {status}"

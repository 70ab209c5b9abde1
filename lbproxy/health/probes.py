"""Active health probes: one TCP connect, or one HTTP request. Each returns ``(ok, detail)``.

A probe never raises for a failed check; ``detail`` says what happened in a few words, used in
logs ("DOWN after 3 failed checks: connection refused") and /status.
"""

from __future__ import annotations

import asyncio
import errno
import os
import ssl

import httptools

from lbproxy.config.model import HealthCheckConfig

MAX_BODY = 64 * 1024


async def tcp_probe(
    host: str, port: int, timeout: float, preamble: bytes = b"", tls: TlsTarget | None = None
) -> tuple[bool, str]:
    """Succeeds when a TCP connection to ``host:port`` (and its TLS handshake) completes in time."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await _open(host, port, tls)
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


TlsTarget = tuple[ssl.SSLContext, str]  # context and server name (SNI, verified name)


async def _open(
    host: str, port: int, tls: TlsTarget | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if tls is None:
        return await asyncio.open_connection(host, port)
    context, server_name = tls
    return await asyncio.open_connection(host, port, ssl=context, server_hostname=server_name)


def _describe(exc: OSError) -> str:
    """A few words for a failed connect, the same on uvloop and asyncio's loop."""
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
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
    host: str, port: int, config: HealthCheckConfig, preamble: bytes = b"", tls: TlsTarget | None = None
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
            reader, writer = await _open(host, port, tls)
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

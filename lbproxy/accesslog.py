"""Access log: one line per L7 request and per L4 connection, in ``combined`` or ``json`` format.

Off unless configured. Lines go to stderr or to a file opened for appending with a 64 KiB buffer
flushed every second (and at close), so logging costs one formatted string per request, not a
syscall. ``reopen`` (wired to SIGUSR1) closes and reopens the file for logrotate.

combined: ``CLIENT - - [TIME] "METHOD TARGET HTTP/V" STATUS BYTES "REFERER" "USER-AGENT"`` followed
by ``rt=SECONDS listener=.. route=.. pool=.. backend=.. id=REQUEST-ID term=REASON``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import IO, TYPE_CHECKING

from lbproxy.config.model import AccessLogConfig

if TYPE_CHECKING:
    from lbproxy.l7.exchange import Exchange

log = logging.getLogger("lbproxy.access")

FLUSH_INTERVAL = 1.0


class AccessLog:
    """Writes access-log lines for one daemon."""

    def __init__(self, config: AccessLogConfig) -> None:
        self.config = config
        self.json = config.format == "json"
        self.stream: IO[str] = self._open()
        self._flusher: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def _open(self) -> IO[str]:
        if self.config.path == "-":
            return sys.stderr
        return open(self.config.path, "a", buffering=65536, encoding="utf-8")  # noqa: SIM115

    def reopen(self) -> None:
        """Close and reopen the file (after logrotate moved it). Errors are logged, not raised."""
        if self.stream is sys.stderr:
            return
        try:
            self.stream.close()
            self.stream = self._open()
        except OSError as exc:
            log.error("cannot reopen access log %s: %s", self.config.path, exc)
            self.stream = sys.stderr

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self.stream is not sys.stderr:
            self.stream.close()
        else:
            self.stream.flush()

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            if self.json:
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
            else:
                self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
        return self._stamp

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line)
        except (OSError, ValueError) as exc:
            log.error("access log write failed: %s", exc)
            return
        if self.stream is not sys.stderr and self._flusher is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.stream.flush()
                return
            self._flusher = loop.call_later(FLUSH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flusher = None
        try:
            self.stream.flush()
        except (OSError, ValueError) as exc:
            log.error("access log flush failed: %s", exc)

    def log_exchange(self, listener_name: str, exchange: Exchange, duration: float) -> None:
        """One line for a finished HTTP request."""
        referer = user_agent = ""
        for name, value in exchange.headers:
            size = len(name)  # lowercase only the names that can match: Referer 7, User-Agent 10
            if size == 7 and name.lower() == b"referer":
                referer = value.decode("latin-1")
            elif size == 10 and name.lower() == b"user-agent":
                user_agent = value.decode("latin-1")
        route = exchange.route
        backend = exchange.backend
        method = exchange.method.decode("latin-1")  # a token (httptools checked): never escaped
        target = exchange.url.decode("latin-1")
        version = "1.0" if exchange.http10 else "1.1"
        client = exchange.session.client_host
        now = time.time()
        stamp = self._stamp if int(now) == self._second else self._time(now)
        if self.json:
            doc = {
                "time": stamp,
                "type": "http",
                "listener": listener_name,
                "client": client,
                "method": method,
                "target": target,
                "version": version,
                "status": exchange.status,
                "bytes_in": exchange.body_bytes,
                "bytes_out": exchange.bytes_out,
                "duration": round(duration, 6),
                "route": route.name if route else None,
                "pool": exchange.pool.name if exchange.pool else None,
                "backend": backend.label if backend else None,
                "request_id": exchange.request_id.decode("latin-1") or None,
                "referer": referer or None,
                "user_agent": user_agent or None,
                "termination": exchange.termination or None,
            }
            self._write(json.dumps(doc) + "\n")
            return
        referer = _clean(referer) if referer else "-"
        user_agent = _clean(user_agent) if user_agent else "-"
        self._write(
            f'{client} - - [{stamp}] "{method} {_clean(target)} HTTP/{version}" {exchange.status} '
            f'{exchange.bytes_out} "{referer}" "{user_agent}" '
            f"rt={duration:.6f} listener={listener_name} route={route.name if route else '-'} "
            f"pool={exchange.pool.name if exchange.pool else '-'} backend={backend.label if backend else '-'} "
            f"id={exchange.request_id.decode('latin-1') or '-'} term={exchange.termination or '-'}\n"
        )

    def log_connection(
        self,
        listener_name: str,
        client: str,
        pool: str,
        backend: str | None,
        bytes_in: int,
        bytes_out: int,
        duration: float,
        termination: str,
    ) -> None:
        """One line for a finished TCP connection."""
        if self.json:
            doc = {
                "time": self._time(time.time()),
                "type": "tcp",
                "listener": listener_name,
                "client": client,
                "pool": pool,
                "backend": backend,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "duration": round(duration, 6),
                "termination": termination or None,
            }
            self._write(json.dumps(doc) + "\n")
            return
        self._write(
            f'{client} - - [{self._time(time.time())}] "TCP" - {bytes_out} "-" "-" rt={duration:.6f} '
            f"listener={listener_name} pool={pool} backend={backend or '-'} in={bytes_in} "
            f"term={termination or '-'}\n"
        )


def _clean(text: str) -> str:
    """Escape quotes, backslashes and control characters so one request stays one line."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')

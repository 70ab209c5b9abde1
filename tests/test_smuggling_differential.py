"""Differential request-smuggling check (issue 10): what a proxy forwards must be read by the
backend as exactly the request the client meant, or the proxy must refuse it.

A corpus of tricky requests (CL/TE variants, chunk extensions, header whitespace and case,
duplicate headers, absolute-form and asterisk targets, very long lines) is written on raw sockets
to the real daemon, in front of a backend that records every byte it receives per connection. The
bytes are parsed afterwards by an independent strict parser (httptools/llhttp, fresh per
connection; h11 is not installed here and is not added). For every case, either

* lbproxy answered 4xx/5xx and the backend received nothing at all, or
* the backend parsed exactly one complete request with the method, target (the normalised path
  is allowed), body and end-to-end headers the client meant, no leftover bytes, no parse error,
  and, where the case pipelines ``GET /smuggled`` after its body, that follower shows up only as
  a separate well-formed request after the first one (or not at all).

The same corpus is run against Debian's haproxy (``haproxy -f CONF -db``) in front of the same
recording backend; its outcomes are documented, not asserted (``docs/smuggling-differential.md``,
regenerated with ``python tests/test_smuggling_differential.py --table``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httptools
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # for ``python tests/test_smuggling_differential.py --table``
    sys.path.insert(0, str(ROOT))

H = b"Host: a.test\r\n"
IN_BODY = b"GET /in-body HTTP/1.1\r\nHost: a.test\r\n\r\n"
FOLLOWER = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
READ_TIMEOUT = 1.0  # a case the proxy leaves hanging (waiting for more body) ends here

FORWARD, REJECT, EITHER = "forward", "reject", "either"


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes  # the case's own request, without the follower
    expect: str  # FORWARD: must arrive intact; REJECT: must be refused; EITHER: one of the two
    method: str = "GET"
    targets: tuple[str, ...] = ("/",)  # acceptable upstream targets (raw or normalised)
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()  # end-to-end headers the client meant, in order per name
    host: str = "a.test"
    follow: bool = True  # pipeline FOLLOWER after the request


def _c(name: str, raw: bytes, expect: str, **kw) -> Case:
    return Case(name, raw, expect, **kw)


def _post(extra: bytes, body: bytes, version: bytes = b"1.1") -> bytes:
    return b"POST /p HTTP/" + version + b"\r\n" + H + extra + b"\r\n" + body


CORPUS: list[Case] = [
    # -- baselines ------------------------------------------------------------------------------
    _c("get-plain", b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n\r\n", FORWARD, headers=(("X-A", "1"),)),
    _c("post-content-length", _post(b"Content-Length: 5\r\n", b"hello"), FORWARD, method="POST", targets=("/p",), body=b"hello"),
    _c("post-chunked", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), FORWARD,
       method="POST", targets=("/p",), body=b"hello world"),
    # -- chunked framing details ----------------------------------------------------------------
    _c("chunk-extensions", _post(b"Transfer-Encoding: chunked\r\n", b'5;ext=1\r\nhello\r\n0;x="y"\r\n\r\n'), EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("chunk-extension-long-10k", _post(b"Transfer-Encoding: chunked\r\n", b"5;e=" + b"a" * 10000 + b"\r\nhello\r\n0\r\n\r\n"),
       EITHER, method="POST", targets=("/p",), body=b"hello"),
    _c("chunk-extension-bare-lf", _post(b"Transfer-Encoding: chunked\r\n", b"5;a\nhello\r\n0\r\n\r\n"), EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("chunked-trailer", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"), EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("chunk-size-uppercase-hex", _post(b"Transfer-Encoding: chunked\r\n", b"A\r\n0123456789\r\n0\r\n\r\n"), FORWARD,
       method="POST", targets=("/p",), body=b"0123456789"),
    _c("chunk-size-leading-zeros", _post(b"Transfer-Encoding: chunked\r\n", b"005\r\nhello\r\n0000\r\n\r\n"), EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("chunk-size-trailing-space", _post(b"Transfer-Encoding: chunked\r\n", b"5 \r\nhello\r\n0\r\n\r\n"), EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("chunk-data-longer-than-size", _post(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n"), REJECT),
    _c("chunk-size-0x-prefix", _post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"), REJECT),
    _c("chunked-body-contains-request", _post(
        b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(IN_BODY), IN_BODY)), FORWARD,
       method="POST", targets=("/p",), body=IN_BODY),
    # -- CL / TE combinations -------------------------------------------------------------------
    _c("cl-te", _post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"), REJECT),
    _c("te-cl", _post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n"), REJECT),
    _c("te-space-before-colon", _post(b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"), REJECT),
    _c("te-tab-before-value", _post(b"Transfer-Encoding:\tchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("te-uppercase-value", _post(b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n"), EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("te-mixed-case-name", _post(b"tRaNsFeR-eNcOdInG: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), FORWARD,
       method="POST", targets=("/p",), body=b"hello"),
    _c("te-xchunked", _post(b"Transfer-Encoding: xchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), REJECT),
    _c("te-chunked-chunked", _post(b"Transfer-Encoding: chunked, chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), REJECT),
    _c("te-two-lines-gzip-then-chunked", _post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                                               b"0\r\n\r\n"), REJECT),
    _c("te-identity", _post(b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", b"hello"), REJECT),
    _c("te-vertical-tab", _post(b"Transfer-Encoding:\x0bchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"), REJECT),
    _c("te-on-http10", _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"1.0"), REJECT),
    _c("cl-duplicate-same", _post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), REJECT),
    _c("cl-duplicate-different", _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), REJECT),
    _c("cl-comma-list", _post(b"Content-Length: 5, 5\r\n", b"hello"), REJECT),
    _c("cl-plus-sign", _post(b"Content-Length: +5\r\n", b"hello"), REJECT),
    _c("cl-empty-cve-2023-40225", _post(b"Content-Length: \r\n", b"hello"), REJECT),
    _c("cl-leading-zeros", _post(b"Content-Length: 005\r\n", b"hello"), EITHER, method="POST", targets=("/p",), body=b"hello"),
    _c("cl-trailing-whitespace", _post(b"Content-Length: 5 \t\r\n", b"hello"), EITHER, method="POST", targets=("/p",),
       body=b"hello"),
    _c("cl-body-longer-than-declared", _post(b"Content-Length: 3\r\n", b"hello"), FORWARD, method="POST", targets=("/p",),
       body=b"hel"),
    _c("get-with-body", b"GET /g HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello", FORWARD, targets=("/g",), body=b"hello"),
    _c("connection-lists-content-length", _post(b"Connection: Content-Length\r\nContent-Length: 5\r\n", b"hello"), EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("connection-lists-transfer-encoding", _post(b"Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n",
                                                   b"5\r\nhello\r\n0\r\n\r\n"), EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("http10-keepalive-content-length", _post(b"Connection: keep-alive\r\nContent-Length: 5\r\n", b"hello", b"1.0"),
       EITHER, method="POST", targets=("/p",), body=b"hello"),
    _c("expect-100-continue", _post(b"Expect: 100-continue\r\nContent-Length: 5\r\n", b"hello"), FORWARD,
       method="POST", targets=("/p",), body=b"hello"),
    _c("upgrade-with-body", _post(b"Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n", b"hello"), REJECT),
    # -- header whitespace, case and syntax -----------------------------------------------------
    _c("header-value-ows", b"GET / HTTP/1.1\r\n" + H + b"X-A: \t spaced out \t\r\n\r\n", FORWARD,
       headers=(("X-A", "spaced out"),)),
    _c("header-name-mixed-case", b"GET / HTTP/1.1\r\nhOsT: a.test\r\nx-TeSt-NaMe: v\r\n\r\n", FORWARD,
       headers=(("X-Test-Name", "v"),)),
    _c("space-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n", REJECT),
    _c("space-in-header-name", b"GET / HTTP/1.1\r\n" + H + b"X-A B: c\r\n\r\n", REJECT),
    _c("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n", REJECT),
    _c("obs-fold-on-content-length", _post(b"X-A: b\r\n Content-Length: 5\r\n", b"hello"), REJECT),
    _c("empty-header-name-cve-2023-25725", b"GET / HTTP/1.1\r\n" + H + b":\r\nContent-Length: 5\r\n\r\nhello", REJECT),
    _c("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", REJECT),
    _c("bare-cr-in-header", b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rContent-Length: 5\r\n\r\nhello", REJECT),
    _c("bare-lf-line-endings", b"POST /p HTTP/1.1\nHost: a.test\nContent-Length: 5\n\nhello", EITHER,
       method="POST", targets=("/p",), body=b"hello"),
    _c("two-hosts", b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", REJECT),
    _c("missing-host-http11", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", REJECT),
    # -- duplicate end-to-end headers -----------------------------------------------------------
    _c("duplicate-end-to-end-header", b"GET / HTTP/1.1\r\n" + H + b"X-Dup: 1\r\nX-Other: o\r\nX-Dup: 2\r\n\r\n", FORWARD,
       headers=(("X-Dup", "1"), ("X-Dup", "2"), ("X-Other", "o"))),
    # -- targets --------------------------------------------------------------------------------
    _c("absolute-form", b"GET http://a.test/abs?q=1 HTTP/1.1\r\n" + H + b"\r\n", FORWARD,
       targets=("/abs?q=1", "http://a.test/abs?q=1")),
    _c("absolute-form-overrides-host", b"GET http://b.test/abs HTTP/1.1\r\n" + H + b"\r\n", EITHER,
       targets=("/abs", "http://b.test/abs"), host="b.test"),
    _c("asterisk-options", b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", FORWARD, method="OPTIONS", targets=("*",)),
    _c("asterisk-get", b"GET * HTTP/1.1\r\n" + H + b"\r\n", REJECT),
    _c("dot-segments-and-escapes", b"GET /a/../b/%61?x=%2e HTTP/1.1\r\n" + H + b"\r\n", FORWARD,
       targets=("/a/../b/%61?x=%2e", "/b/a?x=%2e")),
    _c("lowercase-method", b"get / HTTP/1.1\r\n" + H + b"\r\n", REJECT),
    # -- very long lines ------------------------------------------------------------------------
    _c("long-request-line-8k", b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\n" + H + b"\r\n", FORWARD,
       targets=("/" + "a" * 8000,)),
    _c("long-header-value-8k", b"GET / HTTP/1.1\r\n" + H + b"X-Long: " + b"v" * 8000 + b"\r\n\r\n", FORWARD,
       headers=(("X-Long", "v" * 8000),)),
    _c("header-block-over-64k", b"GET / HTTP/1.1\r\n" + H + b"X-Huge: " + b"v" * 70000 + b"\r\n\r\n", REJECT),
]


# -- the recording backend ---------------------------------------------------------------------


class RecordingBackend:
    """An asyncio server on 127.0.0.1:0 that records every byte per connection, under the case
    that is current when the bytes arrive, and answers each request it can parse with a small
    200 (a parse error gets a 400 and the connection is closed)."""

    def __init__(self) -> None:
        self.current = "-"
        self.records: dict[str, dict[int, bytearray]] = {}
        self.server: asyncio.AbstractServer | None = None
        self._ids = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self._writers):
            w.transport.abort()
        await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._ids += 1
        conn_id = self._ids
        self._writers.add(writer)
        done: list[bool] = []

        class Answer:
            def on_message_complete(self) -> None:
                done.append(True)

        parser = httptools.HttpRequestParser(Answer())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                self.records.setdefault(self.current, {}).setdefault(conn_id, bytearray()).extend(data)
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    pass
                except httptools.HttpParserError:
                    writer.write(b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    break
                while done:
                    done.pop()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@dataclass
class Parsed:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class ConnParse:
    requests: list[Parsed] = field(default_factory=list)
    error: str | None = None  # strict parse error, or bytes left after the last complete request


def strict_parse(data: bytes) -> ConnParse:
    """Parse one connection's bytes with a fresh httptools (llhttp, strict) request parser."""
    out = ConnParse()
    state: dict = {}

    class P:
        def on_message_begin(self) -> None:
            state.update(url=b"", headers=[], body=bytearray(), complete=False)

        def on_url(self, url: bytes) -> None:
            state["url"] += url

        def on_header(self, name: bytes, value: bytes) -> None:
            state["headers"].append((name.decode("latin-1"), value.decode("latin-1")))

        def on_body(self, body: bytes) -> None:
            state["body"] += body

        def on_message_complete(self) -> None:
            state["complete"] = True
            out.requests.append(Parsed(parser.get_method().decode("latin-1"), state["url"].decode("latin-1"),
                                       state["headers"], bytes(state["body"])))

    parser = httptools.HttpRequestParser(P())
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        out.error = "upgrade"
    except httptools.HttpParserError as e:
        out.error = f"parse error: {e}"
    else:
        if state and not state.get("complete", True):
            out.error = "incomplete request (leftover bytes)"
    return out


# -- running one case --------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    statuses: list[int]
    conns: list[ConnParse]
    timed_out: bool
    backend_bytes: int

    @property
    def requests(self) -> list[Parsed]:
        return [r for c in self.conns for r in c.requests]

    def summary(self) -> str:
        """One-line outcome for the comparison table."""
        if not self.backend_bytes:
            if self.statuses:
                return f"rejected {self.statuses[0]}"
            return "no answer, nothing forwarded" + (" (timeout)" if self.timed_out else "")
        parts = []
        for c in self.conns:
            for r in c.requests:
                te = next((v for n, v in r.headers if n.lower() == "transfer-encoding"), None)
                framing = "chunked" if te else f"CL {len(r.body)}"
                parts.append(f"{r.method} {_short(r.target)} ({framing})")
            if c.error:
                parts.append(f"[backend: {c.error}]")
        text = "forwarded " + " + ".join(parts)
        text += f" → client {','.join(map(str, self.statuses)) or 'no status'}"
        if self.timed_out:
            text += " (hung until timeout)"
        return text


def _short(target: str) -> str:
    return target if len(target) <= 30 else target[:20] + f"…({len(target)} chars)"


async def send_case(addr: tuple[str, int], backend: RecordingBackend, case: Case) -> Outcome:
    backend.current = case.name
    reader, writer = await asyncio.open_connection(*addr)
    raw = case.raw + (FOLLOWER if case.follow else b"")
    writer.write(raw)
    data = bytearray()
    timed_out = False
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        timed_out = True
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()
    await asyncio.sleep(0.02)  # let the proxy finish passing anything it still has on to the backend
    statuses = _statuses(bytes(data))
    recorded = backend.records.get(case.name, {})
    # connections in the order their first byte arrived during this case (a proxy may put a later
    # request on an older, reused connection)
    conns = [strict_parse(bytes(b)) for b in recorded.values()]
    return Outcome(case, statuses, conns, timed_out, sum(len(b) for b in recorded.values()))


def _statuses(data: bytes) -> list[int]:
    """Status codes of the responses in ``data`` (framed by Content-Length or chunked)."""
    statuses = []

    class R:
        def on_status(self, status: bytes) -> None:
            statuses.append(parser.get_status_code())

    parser = httptools.HttpResponseParser(R())
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        pass
    return statuses


def violations(o: Outcome) -> list[str]:
    """Why ``o`` breaks the property (empty list: it holds)."""
    case = o.case
    if o.backend_bytes == 0:
        if o.statuses and 400 <= o.statuses[0] <= 599:
            return [] if case.expect in (REJECT, EITHER) else [f"rejected with {o.statuses[0]} but must be forwarded"]
        return [f"nothing forwarded and no 4xx/5xx answer (statuses {o.statuses}, timed out: {o.timed_out})"]
    problems: list[str] = []
    for i, c in enumerate(o.conns):
        if c.error:
            problems.append(f"backend connection {i}: {c.error}")
    reqs = o.requests
    if case.expect == REJECT:
        return ["must be rejected but reached the backend"] + problems
    if not reqs:
        return problems + ["backend received bytes but no complete request"]
    first, rest = reqs[0], reqs[1:]
    if first.method != case.method:
        problems.append(f"method {first.method!r}, meant {case.method!r}")
    if first.target not in case.targets:
        problems.append(f"target {_short(first.target)!r}, meant one of {[_short(t) for t in case.targets]}")
    if first.body != case.body:
        problems.append(f"body {first.body[:80]!r} ({len(first.body)} bytes), meant {case.body[:80]!r} ({len(case.body)} bytes)")
    hosts = [v for n, v in first.headers if n.lower() == "host"]
    if hosts != [case.host]:
        problems.append(f"Host {hosts}, meant [{case.host!r}]")
    for name in {n.lower() for n, _ in case.headers}:
        meant = [v for n, v in case.headers if n.lower() == name]
        got = [v for n, v in first.headers if n.lower() == name]
        if got != meant:
            problems.append(f"header {name}: {[_short(g) for g in got]}, meant {[_short(m) for m in meant]}")
    if b"/smuggled" in first.body and b"/smuggled" not in case.body:
        problems.append("the pipelined follower ended up inside the first request's body")
    for r in rest:
        if not case.follow or r.method != "GET" or r.target != "/smuggled" or r.body:
            problems.append(f"a second request reached the backend: {r.method} {_short(r.target)} body {r.body[:40]!r}")
    return problems


async def run_corpus(addr: tuple[str, int], backend: RecordingBackend, cases: list[Case] = CORPUS) -> list[Outcome]:
    return [await send_case(addr, backend, case) for case in cases]


# -- the systems under test ----------------------------------------------------------------------


def lbproxy_config(backend_port: int) -> str:
    return json.dumps({
        "drain_timeout": 0.5,
        "pools": {"web": {"backends": [f"127.0.0.1:{backend_port}"]}},
        "listeners": [{"name": "public", "bind": "127.0.0.1:0", "routes": [{"pool": "web"}]}],
    })


HAPROXY_CONF = """\
global
    maxconn 200
defaults
    mode http
    timeout connect 1s
    timeout client 2s
    timeout server 2s
    timeout http-request 2s
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server s1 127.0.0.1:{backend_port}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def with_haproxy(backend_port: int, body: Callable[[tuple[str, int]], Awaitable[object]]) -> object:
    """Run haproxy in the foreground (``-db``) in front of ``backend_port`` while ``body`` runs."""
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if exe is None:
        pytest.fail("haproxy is not installed (Debian package 'haproxy' expected)")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "haproxy.cfg"
        conf.write_text(HAPROXY_CONF.format(port=port, backend_port=backend_port))
        log = Path(tmp) / "haproxy.log"
        with log.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(exe, "-f", str(conf), "-db", stdout=log_file, stderr=log_file)
        try:
            deadline = time.monotonic() + 5
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"haproxy exited {proc.returncode}: {log.read_text(errors='replace')}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.transport.abort()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("haproxy did not start listening within 5 s") from None
                    await asyncio.sleep(0.02)
            return await body(("127.0.0.1", port))
        finally:
            if proc.returncode is None:
                proc.kill()  # by PID: the process we started
            async with asyncio.timeout(5):
                await proc.wait()


def haproxy_version() -> str:
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    try:
        out = subprocess.run([exe, "-v"], check=False, capture_output=True, text=True, timeout=5).stdout
    except OSError:
        return "haproxy (not installed)"
    return out.splitlines()[0] if out else "haproxy"


# -- tests -------------------------------------------------------------------------------------


async def test_lbproxy_forwards_each_case_as_meant_or_rejects_it(make_daemon) -> None:
    backend = RecordingBackend()
    port = await backend.start()
    try:
        daemon = await make_daemon(lbproxy_config(port))
        outcomes = await run_corpus(daemon.listener_address("public"), backend)
    finally:
        await backend.stop()
    failures = {o.case.name: (o.summary(), violations(o)) for o in outcomes if violations(o)}
    assert not failures, "lbproxy broke the forward-as-meant-or-reject property:\n" + "\n".join(
        f"  {name}: {summary}\n      " + "\n      ".join(problems) for name, (summary, problems) in failures.items()
    )


async def test_haproxy_runs_the_same_corpus() -> None:
    """Differences from lbproxy are documented in docs/smuggling-differential.md, not asserted;
    this only checks that haproxy ran and every case produced an outcome."""
    backend = RecordingBackend()
    port = await backend.start()
    try:
        outcomes = await with_haproxy(port, lambda addr: run_corpus(addr, backend))
    finally:
        await backend.stop()
    assert len(outcomes) == len(CORPUS)
    assert all(o.summary() for o in outcomes)
    assert any(o.backend_bytes for o in outcomes), "haproxy forwarded nothing at all: it is not proxying"


def test_corpus_is_well_formed() -> None:
    names = [c.name for c in CORPUS]
    assert len(names) == len(set(names))
    assert 30 <= len(CORPUS) <= 70
    for c in CORPUS:
        assert c.expect in (FORWARD, REJECT, EITHER)


def test_the_checker_flags_a_desync() -> None:
    """The property check itself: a clean forward passes; a CL.TE-style desync (the proxy framed
    the body by one header, the backend by another) and a follower glued into the body fail."""
    case = next(c for c in CORPUS if c.name == "post-chunked")
    clean = b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nhello world" + FOLLOWER
    assert violations(Outcome(case, [200, 200], [strict_parse(clean)], False, len(clean))) == []
    desync = b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert violations(Outcome(case, [200], [strict_parse(desync)], False, len(desync)))
    glued = b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\nhello world%s" % (11 + len(FOLLOWER), FOLLOWER)
    assert violations(Outcome(case, [200], [strict_parse(glued)], False, len(glued)))
    smuggled_second = clean.replace(b"/smuggled", b"/admin")
    assert violations(Outcome(case, [200, 200], [strict_parse(smuggled_second)], False, len(smuggled_second)))


# -- the comparison table ------------------------------------------------------------------------


async def _collect() -> tuple[list[Outcome], list[Outcome]]:
    from lbproxy.config.loader import load_config_text
    from lbproxy.runtime.daemon import Daemon

    backend = RecordingBackend()
    port = await backend.start()
    try:
        daemon = Daemon(load_config_text(textwrap.dedent(lbproxy_config(port)), "<differential>"))
        await daemon.start()
        try:
            lb = await run_corpus(daemon.listener_address("public"), backend)
        finally:
            await daemon.shutdown()
        backend.records.clear()
        ha = await with_haproxy(port, lambda addr: run_corpus(addr, backend))
    finally:
        await backend.stop()
    return lb, ha  # type: ignore[return-value]


def _cell(o: Outcome) -> str:
    """The outcome, flagged: a request the corpus says must be refused but that was forwarded
    cleanly is marked "(accepted)"; a backend parse error is already in the summary; anything
    else that breaks the property (wrong method/target/body/headers, an extra request) is a
    **DESYNC**."""
    text = o.summary()
    v = violations(o)
    if v and o.case.expect == REJECT:
        text += " — *accepted*"
    elif any(not p.startswith("backend connection") for p in v):
        text = "**DESYNC** " + text + " — " + "; ".join(v)
    return text.replace("|", "\\|")


def render_table(lb: list[Outcome], ha: list[Outcome]) -> str:
    rows = ["| # | case | meant | lbproxy | haproxy | same? |", "|---|---|---|---|---|---|"]
    for i, (a, b) in enumerate(zip(lb, ha, strict=True), 1):
        same = _kind(a) == _kind(b)
        rows.append(f"| {i} | `{a.case.name}` | {a.case.expect} | {_cell(a)} | {_cell(b)} | {'yes' if same else '**no**'} |")
    return "\n".join(rows)


def _kind(o: Outcome) -> str:
    if o.backend_bytes == 0:
        return f"rejected {o.statuses[0] if o.statuses else '-'}"
    return "forwarded" + (" (violation)" if violations(o) else "")


if __name__ == "__main__":
    if "--table" not in sys.argv:
        sys.exit("usage: python tests/test_smuggling_differential.py --table   (prints the markdown table)")
    lb_out, ha_out = asyncio.run(_collect())
    print(f"<!-- generated by `python tests/test_smuggling_differential.py --table`; {haproxy_version()} -->")
    print(render_table(lb_out, ha_out))

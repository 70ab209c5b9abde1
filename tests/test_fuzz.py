"""Fuzzing (hypothesis): the PROXY-protocol parser and the L7 request path with hostile bytes.

Properties: the parser returns or raises ProxyProtocolError, nothing else; the http listener answers
any byte string with a complete response or a close, within a bound, never crashes, never hangs,
and the daemon keeps serving honest clients. Interesting inputs live in tests/corpus/ and run
as plain regression tests on every run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbproxy.net import proxy_protocol
from tests.client import fetch

CORPUS = Path(__file__).resolve().parent / "corpus"

# -- PROXY protocol parser ---------------------------------------------------------------------

proxy_fragments = st.sampled_from(
    [
        b"PROXY ", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b"127.0.0.1 ", b"::1 ", b"255.255.255.255 ", b"1 ", b"65535 ",
        b"65536", b"\r\n", b"\n", b" ", proxy_protocol.V2_SIGNATURE, b"\x21", b"\x20", b"\x11", b"\x21\x11",
        b"\x00\x0c", b"\xff\xff", b"\x00\x00", b"\x7f\x00\x00\x01",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(proxy_fragments, st.binary(max_size=40)), max_size=12))
def test_proxy_protocol_parser_never_fails_unexpectedly(parts: list[bytes]) -> None:
    data = b"".join(parts)
    try:
        result = proxy_protocol.parse(data)
    except proxy_protocol.ProxyProtocolError:
        return
    if result is not None:
        info, consumed = result
        assert 0 < consumed <= len(data)
        if info.source is not None:
            assert 0 <= info.source[1] <= 65535


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=120))
def test_proxy_protocol_parser_is_prefix_consistent(data: bytes) -> None:
    """Feeding a header in pieces gives the same answer as feeding it whole (or an error earlier)."""
    try:
        whole = proxy_protocol.parse(data)
    except proxy_protocol.ProxyProtocolError:
        whole = "error"
    for cut in range(1, len(data)):
        try:
            partial = proxy_protocol.parse(data[:cut])
        except proxy_protocol.ProxyProtocolError:
            assert whole == "error", "a prefix was refused but the whole header parses"
            return
        if partial is not None:
            assert whole != "error" and whole == partial
            return


# -- the http listener -------------------------------------------------------------------------

request_fragments = st.sampled_from(
    [
        b"GET ", b"POST ", b"G@T ", b"/ ", b"/a?b ", b"http://h/ ", b"* ", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9",
        b"\r\n", b"\n", b"\r", b"Host: a\r\n", b"Host: b\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999999999999\r\n", b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding : chunked\r\n", b" folded\r\n",
        b"Connection: close\r\n", b"Connection: X-Forwarded-For\r\n", b"Expect: 100-continue\r\n",
        b"Upgrade: websocket\r\nConnection: upgrade\r\n", b"X: \x00\r\n", b"\r\n\r\n", b"5\r\nhello\r\n",
        b"0\r\n\r\n", b"zz\r\n", b"ffffffffffffffff\r\n", b"3;ext=1\r\nabc\r\n", b"x" * 300,
    ]
)  # fmt: skip


async def _exchange(host: str, port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, and read until the server closes (bounded)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        chunks = []
        async with asyncio.timeout(5):
            while True:
                try:
                    data = await reader.read(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)
    finally:
        writer.close()


def _check_answer(answer: bytes) -> None:
    """A complete status line with a known status, or nothing (a close)."""
    if not answer:
        return
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    status = int(answer[9:12])
    assert 100 <= status <= 599


async def _fuzz_daemon(make_daemon, http_backends):
    web = await http_backends(1)
    return await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{web[0]}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
            limits: {{request_header_timeout: 2s, client_timeout: 2s, max_header_bytes: 4096}}
        """
    )


async def test_http_listener_survives_random_requests(make_daemon, http_backends) -> None:
    daemon = await _fuzz_daemon(make_daemon, http_backends)
    host, port = daemon.listener_address("public")
    examples: list[bytes] = []

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(request_fragments, st.binary(max_size=30)), min_size=1, max_size=14))
    def collect(parts: list[bytes]) -> None:
        examples.append(b"".join(parts))

    collect()
    for payload in examples:
        _check_answer(await _exchange(host, port, payload))
    # the daemon still serves honest clients, and nothing is left open
    assert (await fetch(host, port)).status == 200
    async with asyncio.timeout(5):
        while daemon.listeners["public"].connections:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("case", sorted(p.name for p in CORPUS.glob("*.http")))
async def test_corpus_regressions(make_daemon, http_backends, case: str) -> None:
    daemon = await _fuzz_daemon(make_daemon, http_backends)
    host, port = daemon.listener_address("public")
    payload = (CORPUS / case).read_bytes()
    answer = await _exchange(host, port, payload)
    _check_answer(answer)
    expected = case.split("-", 1)[0]
    if expected.isdigit():
        assert answer[9:12] == expected.encode(), (case, answer[:120])
    assert (await fetch(host, port)).status == 200

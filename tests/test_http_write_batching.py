"""The L7 data path's writes go through the daemon's outbox (lbproxy.net.outbox), over real
sockets: responses that become ready in one event-loop pass leave together at its end, and
nothing is lost or reordered by holding them (a close after the last response, a large body,
pipelined requests)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from lbproxy.net import outbox as outbox_module
from tests.backends_misbehaving import (  # noqa: F401  (scripted is a fixture)
    BackendConnection,
    Request,
    proxy_config,
    read_until_closed,
    scripted,
)
from tests.client import Connection

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def answering_two_at_once() -> Callable[[BackendConnection, Request], Awaitable[bool]]:
    """A backend script that holds the first request until the second arrives, then answers
    both from one callback (no await between the writes): lbproxy reads both responses in the
    same event-loop pass."""
    waiting: list[BackendConnection] = []
    both = asyncio.Event()

    async def answer_together(conn: BackendConnection, request: Request) -> bool:
        waiting.append(conn)
        if len(waiting) == 2:
            for held in waiting:
                held.write(RESPONSE)
            both.set()
        await both.wait()
        return True

    return answer_together


async def two_clients_answered_at_once(make_daemon, scripted, extra_field: bytes) -> list[Connection]:  # type: ignore[no-untyped-def]
    """A daemon in front of ``answering_two_at_once``, and two clients that each sent it a GET
    (with ``extra_field``, a CRLF-terminated header line, or b"")."""
    backend = await scripted(answering_two_at_once())
    daemon = await make_daemon(proxy_config([backend.port]))
    clients = [await Connection.open(*daemon.listener_address("public")) for _ in range(2)]
    for client in clients:
        await client.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n" + extra_field + b"\r\n")
    return clients


def record_flushes(monkeypatch: pytest.MonkeyPatch) -> list[list[object]]:
    """From now on, each non-empty flush appends the data items it sends (bytes, a tuple or list
    of them, or the outbox's close marker) to the returned list."""
    flushed: list[list[object]] = []
    original_flush = outbox_module.Outbox.flush

    def recording_flush(self: outbox_module.Outbox) -> None:
        if self.held:
            flushed.append(list(self.held[1::2]))
        original_flush(self)

    monkeypatch.setattr(outbox_module.Outbox, "flush", recording_flush)
    return flushed


@pytest.mark.interpreted
async def test_responses_ready_in_one_pass_leave_in_one_flush(make_daemon, scripted, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The backend holds both requests and answers them from one callback: lbproxy reads both
    # responses in the same pass, so its two client writes must be handed over in one flush.
    flushed = record_flushes(monkeypatch)
    clients = await two_clients_answered_at_once(make_daemon, scripted, b"")
    responses = await asyncio.gather(*(client.read_response() for client in clients))
    assert [(r.status, r.body) for r in responses] == [(200, b"hello")] * 2
    together = [
        batch for batch in flushed if sum(isinstance(data, bytes) and data.startswith(b"HTTP/1.1 200") for data in batch) == 2
    ]
    assert together, f"the two responses left in separate flushes: {flushed}"
    for client in clients:
        await client.close()


@pytest.mark.interpreted
async def test_closes_after_responses_leave_with_the_pass_not_one_flush_each(make_daemon, scripted, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Two Connection: close clients answered in one pass at the proxy: both responses and both
    # closes go in one flush (a close that flushed at once would split them).
    flushed = record_flushes(monkeypatch)
    clients = await two_clients_answered_at_once(make_daemon, scripted, b"Connection: close\r\n")
    received = await asyncio.gather(*(read_until_closed(client.reader) for client in clients))
    assert all(data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"hello") for data in received), received
    kinds = [["close" if data is outbox_module._CLOSE else "data" for data in batch] for batch in flushed]
    assert ["data", "close", "data", "close"] in kinds, kinds
    for client in clients:
        await client.close()


async def test_the_last_response_arrives_whole_before_the_close(make_daemon, scripted) -> None:  # type: ignore[no-untyped-def]
    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\nGET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
    data = await read_until_closed(conn.reader)
    assert data.count(b"HTTP/1.1 200 X\r\n") == 2 and data.endswith(b"ok"), data
    await conn.close()


@pytest.mark.interpreted
async def test_a_body_larger_than_the_outbox_holds_arrives_in_order(make_daemon, scripted, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    body = b"".join(b"%07d\n" % i for i in range(3 * outbox_module.MAX_HELD_BYTES // 8))
    held_at_flush: list[int] = []
    original_flush = outbox_module.Outbox.flush

    def recording_flush(self: outbox_module.Outbox) -> None:
        held_at_flush.append(self.held_bytes)
        original_flush(self)

    monkeypatch.setattr(outbox_module.Outbox, "flush", recording_flush)

    async def big(conn: BackendConnection, request: Request) -> bool:
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), 10_000):
            piece = body[start : start + 10_000]
            conn.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.write(b"0\r\n\r\n")
        await conn.drain()
        return True

    backend = await scripted(big)
    daemon = await make_daemon(proxy_config([backend.port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    for _ in range(2):
        response = await conn.request(host="a.example")
        assert response.status == 200 and response.body == body
    await conn.close()
    # The limit bounds what is held: flushes came mid-pass, none far beyond the limit.
    assert max(held_at_flush) > outbox_module.MAX_HELD_BYTES, held_at_flush
    assert max(held_at_flush) <= outbox_module.MAX_HELD_BYTES + 300_000, held_at_flush

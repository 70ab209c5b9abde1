"""A finished connection is freed by reference counting, not left in reference cycles for the
cyclic GC (issue 8: twelve objects per HTTP connection used to wait for the collector)."""

from __future__ import annotations

import asyncio
import collections
import gc

import pytest


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"GET "):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # type: ignore[attr-defined]
        else:
            self.transport.write(data)  # type: ignore[attr-defined]


def _lbproxy_garbage() -> collections.Counter[str]:
    """Objects of lbproxy's own classes that only the cyclic GC could free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return collections.Counter(type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("lbproxy"))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("mode", ["http", "tcp"])
async def test_closed_connections_leave_no_cycles(make_daemon, mode: str) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    backend = await loop.create_server(_Echo, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    listener = "{name: l, bind: 127.0.0.1:0, routes: [{pool: p}]}" if mode == "http" else "{name: l, bind: 127.0.0.1:0, mode: tcp, pool: p}"
    daemon = await make_daemon(f"pools:\n  p: {{backends: ['127.0.0.1:{port}']}}\nlisteners:\n  - {listener}\n")
    message = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" if mode == "http" else b"ping"
    host, lport = daemon.listener_address("l")

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, lport)
        writer.write(message)
        assert await reader.read(100)
        writer.close()
        await writer.wait_closed()

    await one()  # warm: the upstream pool, memos
    gc.collect()
    gc.disable()
    try:
        for _ in range(30):
            await one()
        await asyncio.sleep(0.3)  # let every close finish
        garbage = _lbproxy_garbage()
    finally:
        gc.enable()
        backend.close()
    assert not garbage, garbage

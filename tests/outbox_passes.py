"""Test helper: stretch the daemon's event-loop pass, so that events that could land in one pass
(a backend's response, the client's EOF, a shutdown) deterministically do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from lbproxy.net.outbox import Outbox
from tests.backends_misbehaving import BackendConnection, Request


@asynccontextmanager
async def stretched_pass(outbox: Outbox) -> AsyncIterator[None]:
    """Inside the block nothing the outbox holds is flushed at a pass's end (no flush is
    scheduled), as if lbproxy were still in one long pass; leaving the block ends that pass."""
    for _ in range(5):
        await asyncio.sleep(0)  # let a flush already scheduled run first
    outbox.scheduled = True
    try:
        yield
    finally:
        outbox.end_pass()


async def until_held(outbox: Outbox) -> None:
    """Wait until lbproxy holds a write in ``outbox`` (inside ``stretched_pass``)."""
    while not outbox.held:
        await asyncio.sleep(0.01)


class HeldResponse:
    """A backend script that answers 200 "hello" only once ``release`` is set; ``got_request``
    is set when the request has arrived."""

    def __init__(self) -> None:
        self.got_request = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, conn: BackendConnection, request: Request) -> bool:
        self.got_request.set()
        await self.release.wait()
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        return True

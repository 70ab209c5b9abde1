"""TimerBatch: per-connection timers armed in batches (issue 8), on a real event loop."""

from __future__ import annotations

import asyncio

from lbproxy.timers import MAX_DELAY, TimerBatch, batch_delay
from tests.backends_misbehaving import scripted  # noqa: F401  (a fixture)


class Owner:
    def __init__(self) -> None:
        self.armed_at: list[float] = []

    def arm_timer(self) -> None:
        self.armed_at.append(asyncio.get_running_loop().time())


def test_batch_delay_is_a_quarter_of_the_shortest_timeout_capped() -> None:
    assert batch_delay([10.0, 75.0, 60.0, 2.0]) == MAX_DELAY
    assert batch_delay([0.3, 75.0]) == 0.075
    assert batch_delay([0.0, 5.0]) == MAX_DELAY  # a timeout of 0 (off) does not count


async def test_pending_owners_are_armed_once_after_the_delay() -> None:
    loop = asyncio.get_running_loop()
    batch = TimerBatch(loop, 0.05)
    owners = [Owner() for _ in range(3)]
    start = loop.time()
    for owner in owners:
        batch.add(owner)
    batch.add(owners[0])  # asking twice arms once
    async with asyncio.timeout(2):
        while not all(o.armed_at for o in owners):
            await asyncio.sleep(0.01)
    for owner in owners:
        assert len(owner.armed_at) == 1
        assert 0.04 <= owner.armed_at[0] - start < 1.0
    assert batch.handle is None and not batch.pending


async def test_a_discarded_owner_is_never_armed() -> None:
    batch = TimerBatch(asyncio.get_running_loop(), 0.02)
    gone, staying = Owner(), Owner()
    batch.add(gone)
    batch.add(staying)
    batch.discard(gone)
    await asyncio.sleep(0.1)
    assert gone.armed_at == [] and len(staying.armed_at) == 1


async def test_run_now_arms_at_once_and_cancels_the_batch_timer() -> None:
    batch = TimerBatch(asyncio.get_running_loop(), 10.0)
    owner = Owner()
    batch.add(owner)
    batch.run_now()
    assert len(owner.armed_at) == 1 and batch.handle is None


async def test_a_short_header_timeout_still_fires_on_time(make_daemon, scripted) -> None:  # type: ignore[no-untyped-def]
    """Batched arming keeps a deadline within a quarter of the timeout: 0.4 s fires by ~0.5 s."""
    from tests.backends_misbehaving import proxy_config, read_until_closed

    backend = await scripted()
    daemon = await make_daemon(proxy_config([backend.port], limits={"request_header_timeout": "0.4s"}))
    reader, writer = await asyncio.open_connection(*daemon.listener_address("public"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    writer.write(b"GET / HTTP/1.1\r\nHost: a")  # a head that never ends
    await writer.drain()
    answer = await read_until_closed(reader, timeout=5)
    elapsed = loop.time() - start
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:40]
    assert 0.35 <= elapsed < 0.4 + 0.1 + 0.25, elapsed

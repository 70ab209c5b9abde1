"""Per-connection timers armed in batches, a moment after they are first needed.

Every client connection has a deadline (header, idle, body or closing time), enforced by one loop
timer per connection. Creating and cancelling a uvloop TimerHandle costs about 2 µs, and on a
listener taking a connection per request most connections end within milliseconds, long before
any deadline (issue 8: a tenth of lbproxy's own Python per new connection). So a connection
that needs a timer asks ``TimerBatch.add``; one shared timer, ``delay`` seconds later, asks each
connection still waiting to arm its own (``arm_timer``). A connection that closes first leaves
the batch (``discard``) and never creates one.

A timer is armed at most ``delay`` late, so a deadline shorter than ``delay`` can fire that much
late; listeners pick ``delay`` as a fraction of their shortest timeout (``batch_delay``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

MAX_DELAY = 0.25  # seconds: the longest a timer waits to be armed


class Armable(Protocol):
    def arm_timer(self) -> None:
        """Create the connection's loop timer for its current deadline, if it still needs one."""


def batch_delay(timeouts: Iterable[float]) -> float:
    """The arming delay for a listener whose timeouts are ``timeouts``: a quarter of the
    shortest, at most MAX_DELAY (so a timeout fires at most a quarter of itself late)."""
    return min([MAX_DELAY, *(t / 4 for t in timeouts if t > 0)])


class TimerBatch:
    """Connections waiting for their timer to be armed; see the module docstring."""

    __slots__ = ("loop", "delay", "pending", "handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.pending: dict[Armable, None] = {}  # insertion-ordered set
        self.handle: asyncio.TimerHandle | None = None

    def add(self, owner: Armable) -> None:
        """Call ``owner.arm_timer()`` within ``delay`` seconds, unless discarded before."""
        self.pending[owner] = None
        if self.handle is None:
            self.handle = self.loop.call_at(self.loop.time() + self.delay, self._run)

    def discard(self, owner: Armable) -> None:
        """``owner`` no longer needs a timer (it closed)."""
        self.pending.pop(owner, None)

    def run_now(self) -> None:
        """Arm every pending timer now."""
        if self.handle is not None:
            self.handle.cancel()
        self._run()

    def _run(self) -> None:
        self.handle = None
        pending, self.pending = self.pending, {}
        for owner in pending:
            owner.arm_timer()

    def __repr__(self) -> str:
        return f"<TimerBatch delay={self.delay:g}s pending={len(self.pending)}>"

"""Outbox: writes held until the event loop has handled the current pass's events, then sent.

Why (issue 8). A write to a peer that sleeps in ``epoll_wait`` wakes it, and the *writer* pays for
the wake-up inside its send system call (``sock_def_readable`` -> ``try_to_wake_up``, an
inter-processor interrupt when the peer's CPU is idle: about 1.5 µs on the virtual machines we
measure on). A proxy that writes as each event is handled spaces its writes by its own per-event
work, so a fast peer (the client, a backend) is asleep again before the next write and every
write wakes it anew: perf showed 4.4 µs of lbproxy's 28.6 µs per L7 keep-alive request in those
wake-ups, against 1.2 µs for haproxy. Held to the end of the pass, a pass's writes leave back to
back: the first wakes a peer, the others find it awake. Measured A/B, alternating round by round
(L7 keep-alive, 50 clients; benchmarks/README.md): 9-17% less CPU per request, about 10% more
req/s, and a lower p99 (2.58 -> 1.98 ms in the first run).

Nothing waits for I/O: the pass's first held write schedules ``flush`` with ``call_soon``, which
runs once every I/O callback of the pass has run and before the loop waits for more events. An
idle proxy (one event per pass) sends at once, as before.

Contract: every write to a transport that goes through an outbox goes through the same outbox
(the daemon's one, held by ``lbproxy.l7.listener.UpstreamRegistry`` for every http listener and
upstream connection), and the transport is closed through it too (``close``,
``write_eof``, ``abort`` flush first; ``close_at_pass_end`` holds the close in line with the
writes), so bytes leave in the order they were written and none is lost to a close. Held data
must not be mutated afterwards (bytes, or a tuple/list of them that the caller no longer
touches). Flow control still holds: the transport's ``pause_writing``
fires when the flush hands it more than its high-water mark, and a flush happens as soon as
more than ``MAX_HELD_BYTES`` are held (so at most that plus one write). A write that fails
aborts its transport: the peer sees a reset, never a stream with a hole in it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final

log = logging.getLogger(__name__)

MAX_HELD_BYTES = 256 * 1024  # held beyond this, the outbox flushes at once
_CLOSE: Final = object()  # held in place of data: close the transport there


class Outbox:
    """Holds ``(transport, data)`` writes of one event-loop pass and sends them at its end.

    Used from inside the running loop only, and by one loop: the first write binds the outbox
    to the running loop. (Asking for the running loop each pass would cost a system call each:
    CPython 3.11's ``get_running_loop`` calls ``getpid()`` to notice a fork, one syscall per pass
    of 0.2 µs or more.) A loop that stops with a pass's flush still pending leaves ``scheduled``
    set; the daemon's outbox lives and dies with its loop, and asyncio.Runner runs pending
    callbacks while it closes."""

    __slots__ = ("held", "held_bytes", "sent", "scheduled", "loop", "_on_pass_end")

    def __init__(self) -> None:
        # transport, data, transport, data, ...: flat, so holding a write allocates nothing
        self.held: list[asyncio.WriteTransport | bytes | Sequence[bytes] | object] = []
        self.held_bytes = 0
        self.sent = 0  # how far into ``held`` the flush in progress has got
        self.scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None  # bound by the first write
        self._on_pass_end = self.end_pass  # one bound method, not one per pass

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, kept from now on. RuntimeError outside a running loop."""
        self.loop = loop = asyncio.get_running_loop()
        return loop

    def write(self, transport: asyncio.WriteTransport, data: bytes | bytearray) -> None:
        """Send ``data`` on ``transport`` at the end of this pass (or sooner: MAX_HELD_BYTES)."""
        if not self.scheduled:
            (self.loop or self._bind_loop()).call_soon(self._on_pass_end)
            self.scheduled = True
        held = self.held
        held.append(transport)
        held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > MAX_HELD_BYTES:
            self.flush()

    def writelines(self, transport: asyncio.WriteTransport, parts: Sequence[bytes]) -> None:
        """``write`` for several buffers, sent with one ``writelines`` (one writev)."""
        # write()'s body again, not a shared helper: the extra call would cost every response
        # and request head 0.9k instructions (hotpath.py --instructions: 92.1k -> 93.0k).
        if not self.scheduled:
            (self.loop or self._bind_loop()).call_soon(self._on_pass_end)
            self.scheduled = True
        held = self.held
        held.append(transport)
        held.append(parts)
        self.held_bytes += sum(map(len, parts))
        if self.held_bytes > MAX_HELD_BYTES:
            self.flush()

    def flush(self) -> None:
        """Hand every held write to its transport, in the order written. A transport closed
        since (the peer reset it) drops its bytes, as its own write() would have.

        Re-entrant: a write, close or flush made while this one runs (from a transport's
        ``pause_writing``, say) joins the same queue, behind what is still to be sent."""
        held = self.held
        while True:
            index = self.sent  # re-read: a nested flush may have moved it
            if index >= len(held):
                break
            self.sent = index + 2
            transport: asyncio.WriteTransport = held[index]  # type: ignore[assignment]
            data = held[index + 1]
            if transport.is_closing():
                continue
            try:
                if data.__class__ is tuple or data.__class__ is list:
                    transport.writelines(data)
                elif data is _CLOSE:
                    transport.close()
                else:
                    transport.write(data)  # type: ignore[arg-type]
            except Exception:
                # One broken transport must not keep the others' bytes back, and must not
                # send its later bytes either: a stream with a hole in it would pass for whole.
                log.exception("write to %r failed; aborting it", transport)
                try:
                    transport.abort()
                except Exception:  # already gone
                    pass
        held.clear()
        self.sent = 0
        self.held_bytes = 0

    def close(self, transport: asyncio.BaseTransport) -> None:
        """Close ``transport`` after the bytes held for it (and any other) are handed over."""
        self.flush()
        transport.close()

    def close_at_pass_end(self, transport: asyncio.WriteTransport) -> None:
        """Close ``transport`` with this pass's flush, after the bytes held for it.

        Until then ``transport.is_closing()`` is still False: the caller marks its side closed
        itself, and drops what it reads meanwhile (the L7 session's ``writable`` and
        ``discarding``); a caller that lets the transport close by other means first
        (``eof_received`` returning False) must ``flush`` before. Why: a client connection
        closed after each response (``Connection: close``) would otherwise flush the pass's
        writes once per close, splitting them again. (Paired A/B under l7-newconn: 0.99× the
        CPU per connection, inside the noise; kept because it removes a flush per close.)"""
        if not self.scheduled:
            (self.loop or self._bind_loop()).call_soon(self._on_pass_end)
            self.scheduled = True
        held = self.held
        held.append(transport)
        held.append(_CLOSE)

    def write_eof(self, transport: asyncio.WriteTransport) -> None:
        self.flush()
        transport.write_eof()

    def abort(self, transport: asyncio.WriteTransport) -> None:
        """Flush, then reset ``transport``: held bytes leave first, as they would have unheld."""
        self.flush()
        transport.abort()

    def end_pass(self) -> None:
        """The scheduled callback: the pass is over, send what it wrote. (A harness driving
        protocol callbacks without running the loop calls it where a pass would end.)"""
        self.scheduled = False
        self.flush()

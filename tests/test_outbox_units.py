"""The outbox's contract (lbproxy.net.outbox), on recording transports: writes held to the end of
the event loop's pass and then sent in order, closes after what was held, a bound on what is
held, and one broken transport not holding back the others."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from lbproxy.net.outbox import MAX_HELD_BYTES, Outbox


class Recording(asyncio.Transport):
    """A transport that logs every call, into a log it may share with others."""

    def __init__(self, name: str, log: list[tuple[str, str, bytes]], fail: bool = False) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.fail = fail
        self.closing = False

    def write(self, data: Any) -> None:
        if self.fail:
            raise RuntimeError("broken transport")
        self.log.append((self.name, "write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.log.append((self.name, "writelines", b"|".join(list_of_data)))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.log.append((self.name, "close", b""))

    def abort(self) -> None:
        self.closing = True
        self.log.append((self.name, "abort", b""))

    def write_eof(self) -> None:
        self.log.append((self.name, "write_eof", b""))


async def test_writes_wait_for_the_end_of_the_pass_then_leave_in_order() -> None:
    log: list[tuple[str, str, bytes]] = []
    a, b = Recording("a", log), Recording("b", log)
    outbox = Outbox()
    outbox.write(a, b"1")
    outbox.write(b, b"x")
    outbox.writelines(a, (b"2", b"3"))
    outbox.write(a, b"4")
    assert log == [], "nothing is sent before the pass ends"
    await asyncio.sleep(0)  # the pass ends: the scheduled flush runs
    assert log == [("a", "write", b"1"), ("b", "write", b"x"), ("a", "writelines", b"2|3"), ("a", "write", b"4")]
    # The next pass schedules its own flush.
    outbox.write(b, b"y")
    assert log[-1] != ("b", "write", b"y")
    await asyncio.sleep(0)
    assert log[-1] == ("b", "write", b"y")


@pytest.mark.parametrize("how", ["close", "write_eof", "abort"])
async def test_closing_a_transport_sends_what_was_held_first(how: str) -> None:
    log: list[tuple[str, str, bytes]] = []
    a, b = Recording("a", log), Recording("b", log)
    outbox = Outbox()
    outbox.write(a, b"last response")
    outbox.write(b, b"other")
    getattr(outbox, how)(a)
    assert log == [("a", "write", b"last response"), ("b", "write", b"other"), ("a", how, b"")]
    await asyncio.sleep(0)
    assert len(log) == 3, "nothing is sent twice"


async def test_no_more_than_the_limit_is_ever_held() -> None:
    log: list[tuple[str, str, bytes]] = []
    a = Recording("a", log)
    outbox = Outbox()
    chunk = b"x" * (MAX_HELD_BYTES // 4)
    for _ in range(4):
        outbox.write(a, chunk)
    assert log == [] and outbox.held_bytes == MAX_HELD_BYTES
    outbox.writelines(a, (b"y",))  # one byte over: everything goes now, in order
    assert [entry[2] for entry in log] == [chunk] * 4 + [b"y"]
    assert outbox.held == [] and outbox.held_bytes == 0


async def test_a_closed_or_broken_transport_does_not_hold_back_the_others(caplog: pytest.LogCaptureFixture) -> None:
    log: list[tuple[str, str, bytes]] = []
    gone, broken, fine = Recording("gone", log), Recording("broken", log, fail=True), Recording("fine", log)
    outbox = Outbox()
    outbox.write(gone, b"lost")
    outbox.write(broken, b"raises")
    outbox.write(fine, b"kept")
    outbox.write(broken, b"never after a hole")
    gone.closing = True  # the peer reset it before the pass ended
    with caplog.at_level(logging.ERROR, logger="lbproxy.net.outbox"):
        await asyncio.sleep(0)
    # The failed write aborts its transport (a reset, not a stream with a hole), and its later
    # bytes are not sent; the other transport's are.
    assert log == [("broken", "abort", b""), ("fine", "write", b"kept")]
    assert "write to" in caplog.text and "broken transport" in caplog.text


async def test_a_flush_nested_in_a_flush_keeps_the_order() -> None:
    log: list[tuple[str, str, bytes]] = []
    outbox = Outbox()
    b = Recording("b", log)

    class Nesting(Recording):
        def write(self, data: Any) -> None:
            super().write(data)
            outbox.write(b, b"late")  # as a pause_writing callback might: write, then close
            outbox.close(b)

    a = Nesting("a", log)
    outbox.write(a, b"first")
    outbox.write(b, b"early")
    outbox.flush()
    assert log == [("a", "write", b"first"), ("b", "write", b"early"), ("b", "write", b"late"), ("b", "close", b"")]
    assert outbox.held == [] and outbox.sent == 0


def test_a_write_outside_a_running_loop_leaves_nothing_scheduled() -> None:
    outbox = Outbox()
    with pytest.raises(RuntimeError):
        outbox.write(Recording("a", []), b"x")
    assert not outbox.scheduled, "a later pass must still schedule its flush"


async def test_a_bytearray_is_written_as_bytes() -> None:
    log: list[tuple[str, str, bytes]] = []
    a = Recording("a", log)
    outbox = Outbox()
    outbox.write(a, bytearray(b"abc"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert log == [("a", "write", b"abc")]


async def test_flushing_with_nothing_held_does_nothing() -> None:
    outbox = Outbox()
    outbox.flush()
    outbox.end_pass()
    assert outbox.held == [] and not outbox.scheduled


async def test_a_close_at_pass_end_waits_with_the_writes_and_keeps_their_order() -> None:
    log: list[tuple[str, str, bytes]] = []
    a, b = Recording("a", log), Recording("b", log)
    outbox = Outbox()
    outbox.write(a, b"last response")
    outbox.close_at_pass_end(a)
    outbox.write(b, b"other")  # a later write of the pass is not split off by the close
    outbox.write(a, b"after the close")  # dropped, as a closed transport's write would be
    assert log == [], "the close does not flush the pass early"
    await asyncio.sleep(0)
    assert log == [("a", "write", b"last response"), ("a", "close", b""), ("b", "write", b"other")]


async def test_the_loop_is_asked_for_once_not_each_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPython 3.11's get_running_loop() makes a getpid() system call: once per pass was measurable.
    calls = 0
    real = asyncio.get_running_loop

    def counting() -> asyncio.AbstractEventLoop:
        nonlocal calls
        calls += 1
        return real()

    monkeypatch.setattr(asyncio, "get_running_loop", counting)
    log: list[tuple[str, str, bytes]] = []
    a = Recording("a", log)
    outbox = Outbox()
    for n in range(3):
        outbox.write(a, b"%d" % n)
        outbox.close_at_pass_end(Recording("c", log))
        await asyncio.sleep(0)
    assert [entry for entry in log if entry[1] == "write"] == [("a", "write", b"0"), ("a", "write", b"1"), ("a", "write", b"2")]
    assert calls == 1

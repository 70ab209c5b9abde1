"""The control channel between the supervisor and one worker: JSON messages, and sockets with them.

How this works: one end of a ``socketpair(AF_UNIX, SOCK_STREAM)`` per worker, inherited by the
worker at spawn (so no path on disk, and no other process can connect). A message is a 4-byte
big-endian length and a JSON object. A message may carry file descriptors (listening sockets) in
an ``SCM_RIGHTS`` control message sent with its first byte; the JSON says how many (``nfds``),
and the receiver takes that many from the queue of descriptors received so far (they arrive no
later than the message's first byte, in order).

Reads and writes are non-blocking callbacks on the event loop (``add_reader``/``add_writer``),
never on the data path of a listener. The send buffer is bounded: a peer that stops reading
(a stuck worker) gets its channel closed rather than growing the supervisor's memory.

Requests carry an ``id``; the answer carries ``re`` with the same id (``request`` waits for it,
with a timeout). Other messages go to ``on_message``.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import json
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("lbproxy.channel")

Message = dict[str, Any]
OnMessage = Callable[[Message, list[int]], None]

HEADER = 4
MAX_MESSAGE = 64 * 1024 * 1024  # a frame bigger than this is a bug: the channel is closed
MAX_PENDING = 64 * 1024 * 1024  # bytes queued for a peer that is not reading
MAX_FDS = 250  # per message (the kernel's SCM_MAX_FD is 253)
READ_SIZE = 256 * 1024
_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


class ChannelClosed(Exception):
    """The peer is gone (or the channel was closed): nothing more can be sent or answered."""


class ControlChannel:
    """One end of a control socketpair, driven by the running event loop."""

    def __init__(self, sock: socket.socket, on_message: OnMessage, name: str = "channel") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.name = name
        self.on_message = on_message
        self.loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._inbuf = bytearray()
        self._fds: deque[int] = deque()
        self._out: deque[tuple[memoryview, list[int]]] = deque()
        self._pending = 0
        self._writing = False
        self._ids = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[Message]] = {}
        self.loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    # -- sending ---------------------------------------------------------------------------------

    def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        """Queue ``message`` (with ``fds``, which must stay open until sent). Raises ChannelClosed."""
        if self.is_closed:
            raise ChannelClosed(self.name)
        if len(fds) > MAX_FDS:
            raise ValueError(f"at most {MAX_FDS} descriptors per message, got {len(fds)}")
        if fds:
            message = {**message, "nfds": len(fds)}
        body = json.dumps(message, separators=(",", ":")).encode()
        frame = len(body).to_bytes(HEADER, "big") + body
        self._out.append((memoryview(frame), list(fds)))
        self._pending += len(frame)
        if self._pending > MAX_PENDING:
            log.error("%s: peer not reading (%d bytes queued); closing", self.name, self._pending)
            self.close()
            raise ChannelClosed(self.name)
        self._flush()

    async def request(self, message: Message, timeout: float, fds: Sequence[int] = ()) -> Message:
        """Send ``message`` and wait up to ``timeout`` s for its answer.

        Raises ChannelClosed when the peer goes away first, TimeoutError when it is too slow.
        """
        request_id = next(self._ids)
        waiter: asyncio.Future[Message] = self.loop.create_future()
        self._waiters[request_id] = waiter
        try:
            self.send({**message, "id": request_id}, fds)
            async with asyncio.timeout(timeout):
                return await waiter
        finally:
            self._waiters.pop(request_id, None)

    def reply(self, request: Message, answer: Message) -> None:
        """Answer ``request``; a peer that has gone away is ignored."""
        if "id" in request and not self.is_closed:
            self.send({**answer, "re": request["id"]})

    def _flush(self) -> None:
        while self._out:
            data, fds = self._out[0]
            try:
                if fds:
                    sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                    self._out[0] = (data, [])  # the descriptors went with the first byte
                else:
                    sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._lost(exc)
                return
            self._pending -= sent
            if sent < len(data):
                self._out[0] = (data[sent:], [])
                break
            self._out.popleft()
        if self._out and not self._writing:
            self.loop.add_writer(self.sock.fileno(), self._flush)
            self._writing = True
        elif not self._out and self._writing:
            self.loop.remove_writer(self.sock.fileno())
            self._writing = False

    # -- receiving -------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        while True:
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(READ_SIZE, _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lost(exc)
                return
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                log.error("%s: file descriptors were lost (control data truncated)", self.name)
            if not data:
                self._lost(None)
                return
            self._inbuf += data
            if not self._parse():
                return

    def _parse(self) -> bool:
        """Dispatch every complete message; False when the channel had to be closed."""
        while len(self._inbuf) >= HEADER:
            size = int.from_bytes(self._inbuf[:HEADER], "big")
            if size > MAX_MESSAGE:
                log.error("%s: message of %d bytes; closing", self.name, size)
                self._lost(None)
                return False
            if len(self._inbuf) < HEADER + size:
                return True
            body = bytes(self._inbuf[HEADER : HEADER + size])
            del self._inbuf[: HEADER + size]
            try:
                message = json.loads(body)
            except ValueError:
                log.error("%s: malformed message; closing", self.name)
                self._lost(None)
                return False
            fds = [self._fds.popleft() for _ in range(min(int(message.get("nfds", 0)), len(self._fds)))]
            waiter = self._waiters.get(message["re"]) if "re" in message else None
            if waiter is not None:
                for fd in fds:
                    os.close(fd)
                if not waiter.done():
                    waiter.set_result(message)
                continue
            try:
                self.on_message(message, fds)
            except Exception:  # noqa: BLE001 - one bad message must not kill the channel
                log.exception("%s: handling %s failed", self.name, message.get("op"))
            if self.is_closed:
                return False
        return True

    # -- closing ---------------------------------------------------------------------------------

    def _lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("%s: %s", self.name, exc)
        self.close()

    def close(self) -> None:
        """Close the socket; pending requests fail with ChannelClosed. Idempotent."""
        if self.is_closed:
            return
        self.loop.remove_reader(self.sock.fileno())
        if self._writing:
            self.loop.remove_writer(self.sock.fileno())
            self._writing = False
        self.sock.close()
        self._out.clear()
        while self._fds:
            os.close(self._fds.popleft())
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ChannelClosed(self.name))
        self.closed.set_result(None)

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else f"pending={self._pending} waiting={len(self._waiters)}"
        return f"<ControlChannel {self.name} {state}>"

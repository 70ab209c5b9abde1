"""A worker process: one ``Daemon`` (role ``worker``) driven by its supervisor over a channel.

Started by the supervisor as ``python -m lbproxy run -c FILE --worker-channel FD``. The first
message on the channel (``init``) carries the configuration text the supervisor validated, the
listening sockets, the backends DNS discovery found and each backend's current health and admin
state, so a worker restarted after a crash joins with the same view as the others. Then it serves
traffic and the supervisor's messages, one at a time, in order:

- ``status`` / ``metrics``: this worker's /status document and metrics snapshot;
- ``action``: an admin action (drain, disable, enable, weight) on one backend;
- ``verdict``: a backend went up or down by the (supervisor's) active health checks;
- ``members``: DNS discovery changed a pool;
- ``reload``: a new, already validated configuration (and sockets for new listeners);
- ``reopen``: reopen the access log.

SIGTERM drains and exits 0. If the supervisor goes away (the channel closes), the worker drains
and exits too, so a killed supervisor never leaves workers serving a stale configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from lbproxy.admin.metrics import snapshot
from lbproxy.admin.server import apply_backend_action
from lbproxy.config.loader import load_config_text
from lbproxy.discovery.members import from_wire
from lbproxy.errors import ConfigError
from lbproxy.runtime.channel import ControlChannel, Message
from lbproxy.runtime.daemon import Daemon

log = logging.getLogger("lbproxy.worker")

INIT_TIMEOUT = 30.0


class WorkerError(Exception):
    """The worker could not start (no init message, or a configuration it cannot use)."""


def adopt_sockets(names: list[str], fds: list[int]) -> dict[str, list[socket.socket]]:
    """The listening sockets a message carried, by listener name: ``names[i]`` names the
    listener of ``fds[i]``, and a name repeats for each of its sockets (``accept_sockets``)."""
    if len(names) != len(fds):
        for fd in fds:
            os.close(fd)
        raise WorkerError(f"expected {len(names)} sockets, received {len(fds)}")
    sockets: dict[str, list[socket.socket]] = {}
    for name, fd in zip(names, fds):
        sockets.setdefault(name, []).append(socket.socket(fileno=fd))
    return sockets


def apply_state(daemon: Daemon, state: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    """Take over the supervisor's view of each backend: admin state, weight, checked up or down."""
    for pool_name, backends in state.items():
        pool = daemon.pools.get(pool_name)
        if pool is None:
            continue
        for label, view in backends.items():
            backend = pool.by_label.get(label)
            if backend is None:
                continue
            if view["admin"] != backend.admin:
                backend.set_admin(view["admin"], "as the supervisor has it")
            if not view["checked_up"]:
                backend.set_checked_up(False, "as the supervisor's health checks have it")
            if view["weight"] != backend.base_weight:
                backend.base_weight = backend.weight = view["weight"]


class Worker:
    """Owns the daemon of a worker process and its channel to the supervisor."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.index = index
        self.daemon: Daemon | None = None
        self.stop_requested = False
        self.inbox: asyncio.Queue[tuple[Message, list[int]]] = asyncio.Queue()
        self.channel = ControlChannel(sock, self._on_message, name="supervisor channel")

    def _on_message(self, message: Message, fds: list[int]) -> None:
        self.inbox.put_nowait((message, fds))

    async def start(self) -> None:
        """Wait for ``init``, then build and start the daemon and report ready.

        Raises WorkerError (no usable init) or OSError (a listener could not start).
        """
        inbox: asyncio.Future[Any] = asyncio.ensure_future(self.inbox.get())
        waiting: set[asyncio.Future[Any]] = {inbox, self.channel.closed}
        try:
            done, _ = await asyncio.wait(waiting, timeout=INIT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not inbox.done():
                inbox.cancel()
        if inbox not in done:
            if self.channel.is_closed:
                raise WorkerError("the supervisor closed the channel before sending the configuration")
            raise WorkerError(f"no configuration from the supervisor within {INIT_TIMEOUT:g}s")
        message, fds = inbox.result()
        if message.get("op") != "init":
            raise WorkerError(f"expected an init message, got {message.get('op')!r}")
        try:
            config = load_config_text(message["text"], message["source"])
        except ConfigError as exc:
            raise WorkerError("; ".join(exc.problems)) from exc
        daemon = Daemon(config, sockets=adopt_sockets(message["sockets"], fds), role="worker")
        daemon.discovered = {pool: from_wire(items) for pool, items in message["discovered"].items()}
        self.daemon = daemon
        await daemon.start(prepare=lambda d: apply_state(d, message["backends"]))
        daemon.close_unused_sockets()
        self.channel.send(
            {
                "op": "ready",
                "pid": os.getpid(),
                "listeners": {name: list(daemon.listener_address(name)) for name in daemon.listeners},
            }
        )

    async def run(self) -> int:
        """Serve the supervisor's messages until the daemon has shut down. Returns the exit code."""
        daemon = self.daemon
        assert daemon is not None, "start() first"
        serving = asyncio.ensure_future(self._serve())
        stopped = asyncio.ensure_future(daemon.run_until_stopped())
        if self.stop_requested:
            daemon.request_stop()
        try:
            await asyncio.wait({stopped, self.channel.closed}, return_when=asyncio.FIRST_COMPLETED)
            if not stopped.done():
                log.warning("the supervisor is gone: shutting down")
                daemon.request_stop()
                await stopped
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            self.channel.close()
        return 0

    def request_stop(self) -> None:
        """SIGTERM: drain and exit (safe from a signal handler, more than once; before ``start``
        has finished too: the daemon then stops as soon as it runs)."""
        self.stop_requested = True
        if self.daemon is not None:
            self.daemon.request_stop()

    def reopen_logs(self) -> None:
        if self.daemon is not None:
            self.daemon.reopen_logs()

    async def _serve(self) -> None:
        while True:
            message, fds = await self.inbox.get()
            try:
                await self._handle(message, fds)
            except Exception:  # noqa: BLE001 - a bad message must not stop the worker
                log.exception("handling %s from the supervisor failed", message.get("op"))
                self.channel.reply(message, {"error": "internal error"})

    async def _handle(self, message: Message, fds: list[int]) -> None:
        daemon = self.daemon
        assert daemon is not None
        op = message.get("op")
        if op == "status":
            self.channel.reply(message, {"status": daemon.status()})
        elif op == "metrics":
            self.channel.reply(message, {"metrics": snapshot(daemon)})
        elif op == "verdict":
            backend = self._backend(message)
            if backend is not None:
                backend.set_checked_up(bool(message["up"]), str(message["reason"]))
        elif op == "members":
            daemon.apply_discovered(message["pool"], from_wire(message["backends"]))
        elif op == "action":
            backend = self._backend(message)
            if backend is None:
                self.channel.reply(message, {"ok": False, "error": "no such backend"})
                return
            apply_backend_action(daemon.pools[message["pool"]], backend, message["action"], message.get("weight"))
            self.channel.reply(message, {"ok": True, "state": backend.state.value})
        elif op == "reload":
            await self._reload(message, fds)
        elif op == "reopen":
            daemon.reopen_logs()
        else:
            log.warning("unknown message from the supervisor: %r", op)
            self.channel.reply(message, {"error": f"unknown op {op!r}"})

    def _backend(self, message: Message) -> Any:
        assert self.daemon is not None
        pool = self.daemon.pools.get(message["pool"])
        return pool.by_label.get(message["backend"]) if pool is not None else None

    async def _reload(self, message: Message, fds: list[int]) -> None:
        daemon = self.daemon
        assert daemon is not None
        try:
            daemon.adopt_sockets(adopt_sockets(message["sockets"], fds))
            config = load_config_text(message["text"], message["source"])
            daemon.discovered = {pool: from_wire(items) for pool, items in message["discovered"].items()}
            notes = await daemon.reload(config)
        except (ConfigError, OSError, WorkerError) as exc:
            log.error("could not apply the new configuration: %s", exc)
            self.channel.reply(message, {"applied": False, "error": str(exc)})
            return
        finally:
            daemon.close_unused_sockets()
        self.channel.reply(message, {"applied": True, "notes": notes})

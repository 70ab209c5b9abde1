"""Supervisor: ``workers: N`` processes sharing the listening sockets, one health view, one admin.

How this works:
- The supervisor binds every data listener (``bind_socket``) and starts N worker processes
  (``python -m lbproxy run -c FILE --worker-channel FD``, see ``lbproxy.runtime.worker``), handing
  each the sockets, the configuration text it validated, and the current state over a private
  control channel (a socketpair). With ``sharing="reuseport"`` (the default) each worker gets
  its own SO_REUSEPORT sockets on the address (a listener's ``accept_sockets`` of them) and the
  kernel spreads new connections over all of them by hash: even under light load and for
  bursts of long-lived connections, where one shared socket lets whichever worker wakes first
  take most of them (measured: 50 keep-alive connections opened at once landed 75% on one
  worker on average with one shared socket, 55% with SO_REUSEPORT). The supervisor keeps every
  socket open, so connections queued for a worker that dies wait for its replacement instead
  of being reset; if it dies again quickly, its sockets are closed (new connections go to the
  others) and new ones are bound when it restarts.
  ``sharing="shared"`` gives every worker the same inherited sockets (``accept_sockets`` accept
  queues, each served by every worker).
- It runs the ``view`` daemon: the pools as the whole daemon sees them, the active health checks
  (once per backend, however many workers), DNS discovery and the ``dns`` listeners. Each up/down
  verdict and each change discovery makes is sent to every worker. Passive ejection stays per
  worker (each sees its own traffic).
- It serves the admin listener: /status and /metrics ask every worker (bounded) and merge
  (``lbproxy.runtime.merge``); backend actions are applied to the view and sent to every worker.
- Signals only enqueue a command (``stop``, ``reload``, ``reopen``); one loop carries them out.
  Reload validates the file first (the messages of ``lbproxy check``), refuses a bad one, binds
  new listeners, applies it to the view, then to each worker; a worker that cannot apply it is
  restarted with the new configuration.
- A worker that dies is restarted after a backoff (0.5 s doubling to 30 s; back to 0.5 s once a
  worker has lived 30 s). Stop: /readyz fails at once, every worker gets SIGTERM and drains
  (shutdown_delay, then drain_timeout); stragglers are killed after shutdown_delay +
  drain_timeout + 10 s; then the supervisor exits 0.
The data path never touches the supervisor: workers accept and proxy on their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import lbproxy
from lbproxy import __version__
from lbproxy.admin.metrics import render_snapshot, snapshot
from lbproxy.admin.server import AdminServer, apply_backend_action
from lbproxy.config.loader import load_config_text
from lbproxy.config.model import Address, BackendConfig, Config
from lbproxy.discovery.members import to_wire
from lbproxy.errors import ConfigError
from lbproxy.net.bind import bind_socket, bind_sockets, bound_address
from lbproxy.pool.backend import Backend
from lbproxy.runtime.channel import ChannelClosed, ControlChannel, Message
from lbproxy.runtime.daemon import Daemon
from lbproxy.runtime.merge import Snapshot, fold_departed, merge_metrics, merge_status
from lbproxy.runtime.reload import socket_notes

log = logging.getLogger("lbproxy.supervisor")

SocketSharing = Literal["shared", "reuseport"]
WorkerState = Literal["starting", "running", "restarting", "stopped"]

START_TIMEOUT = 30.0  # every worker ready at start
FANOUT_TIMEOUT = 5.0  # a worker answering /status, /metrics or an admin action
RELOAD_TIMEOUT = 30.0  # a worker applying a new configuration
STOP_GRACE = 10.0  # beyond shutdown_delay + drain_timeout before workers are killed
KILL_WAIT = 5.0
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
RELEASE_AFTER = 1.0  # reuseport: a worker in a backoff this long gives up its socket meanwhile
STABLE_AFTER = 30.0  # a worker that lived this long restarts with the shortest backoff


def resolve_workers(value: int | str) -> int:
    """The number of workers for a ``workers`` value: ``auto`` is the cores this process may use."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    return int(value)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "could not be started"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return "exited" if code == 0 else f"exited with code {code}"


@dataclass(eq=False)
class WorkerSlot:
    """One of the N worker positions; its process is replaced when it dies."""

    index: int
    process: asyncio.subprocess.Process | None = None
    channel: ControlChannel | None = None
    pid: int | None = None
    state: WorkerState = "starting"
    restarts: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    last_metrics: Snapshot | None = None

    def __repr__(self) -> str:
        return f"<WorkerSlot {self.index} pid={self.pid} {self.state} restarts={self.restarts}>"


class Supervisor:
    """Runs N workers for one configuration file. ``run()`` returns the process exit code."""

    def __init__(
        self,
        config: Config,
        workers: int,
        *,
        sharing: SocketSharing = "reuseport",
        log_level: str = "info",
        workers_from_cli: bool = False,
    ) -> None:
        self.config = config
        self.text = ""
        self.sharing: SocketSharing = sharing
        self.log_level = log_level
        self.workers_from_cli = workers_from_cli
        self.slots = [WorkerSlot(i) for i in range(workers)]
        # listener -> its sockets: accept_sockets shared by all workers, or accept_sockets per
        # worker, worker 0's first (None: released while the worker is down; see ``_share``)
        self.sockets: dict[str, list[socket.socket | None]] = {}
        self.binds: dict[str, Address] = {}  # listener -> the bind address it was opened for
        self.bound: dict[str, Address] = {}  # listener -> the address it is bound to (port 0 resolved)
        self.view: Daemon | None = None
        self.admin: AdminServer | None = None
        self.commands: asyncio.Queue[str] = asyncio.Queue()
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload_success = time.time()
        self.started_at = time.time()
        self.departed: Snapshot | None = None  # counters of workers that exited
        self.running = False
        self.stopping = False
        self._stopping = asyncio.Event()
        self._startup_failed = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """/readyz: up, not stopping, and at least one worker serving."""
        return self.running and not self.stopping and any(s.state == "running" for s in self.slots)

    def request(self, command: str) -> None:
        """Queue ``stop``, ``reload`` or ``reopen`` (what signal handlers call; nothing more)."""
        self.commands.put_nowait(command)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> int:
        try:
            await self._open()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            await self._close()
            return 1
        except OSError as exc:
            log.error("cannot start: %s", exc)
            await self._close()
            return 1
        code = 0
        async with asyncio.TaskGroup() as tasks:
            for slot in self.slots:
                tasks.create_task(self._supervise(slot), name=f"worker {slot.index}")
            if await self._wait_started():
                self.running = True
                log.info(
                    "lbproxy %s running: %d listeners, %d pools, %d workers (pids %s; sockets %s)",
                    __version__, len(self.config.listeners), len(self.config.pools), len(self.slots),
                    ", ".join(str(s.pid) for s in self.slots), self.sharing,
                )  # fmt: skip
                await self._serve_commands()
            else:
                code = 1
            await self._stop_workers()
        await self._close()
        log.info("shutdown complete")
        return code

    async def _open(self) -> None:
        """Read and validate the file, bind the listeners, start the view and the admin listener."""
        source = self.config.source
        self.text = _read(source)
        self.config = self._fix_workers(load_config_text(self.text, source))
        self.sockets = self._bind(self.config, {})
        self.view = Daemon(self.config, role="view", on_verdict=self._verdict, on_members=self._members)
        await self.view.start()
        if self.config.admin is not None:
            self.admin = AdminServer(self, self.config.admin)
            await self.admin.start()

    async def _wait_started(self) -> bool:
        ready: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(s.ready.wait() for s in self.slots)))
        failed: asyncio.Future[Any] = asyncio.ensure_future(self._startup_failed.wait())
        stop: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({ready, failed, stop}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (ready, failed, stop):
                task.cancel()
        if ready in done and not failed.done():
            return True
        if not done:
            log.error("cannot start: not every worker was ready within %gs", START_TIMEOUT)
        elif failed in done:
            log.error("cannot start: a worker exited before it was ready")
        return False

    async def _serve_commands(self) -> None:
        while True:
            command = await self.commands.get()
            if command == "stop":
                log.info("shutdown requested")
                return
            if command == "reload":
                await self.reload_from_file()
            elif command == "reopen":
                self._broadcast({"op": "reopen"})

    async def _stop_workers(self) -> None:
        self.stopping = True
        self._stopping.set()
        view_stopping = asyncio.ensure_future(self.view.shutdown()) if self.view is not None else None
        processes = [s.process for s in self.slots if s.process is not None and s.process.returncode is None]
        if processes:
            log.info("shutdown: %d workers draining", len(processes))
        for process in processes:
            _signal(process, signal.SIGTERM)
        # Our copies would keep completing handshakes nobody accepts once the workers stop
        # accepting; without them a listener closes when its last worker stops, as with one process.
        self._close_sockets()
        bound = self.config.shutdown_delay + self.config.drain_timeout + STOP_GRACE
        try:
            async with asyncio.timeout(bound):
                await asyncio.gather(*(p.wait() for p in processes))
        except TimeoutError:
            for process in processes:
                if process.returncode is None:
                    log.warning("worker pid %d still running after %gs: killing it", process.pid, bound)
                    _signal(process, signal.SIGKILL)
            try:
                async with asyncio.timeout(KILL_WAIT):
                    await asyncio.gather(*(p.wait() for p in processes))
            except TimeoutError:
                log.error("workers did not exit after SIGKILL")
        if view_stopping is not None:
            await view_stopping

    def _close_sockets(self) -> None:
        """Close our copies of the listening sockets (a worker's copy keeps its socket listening)."""
        for sockets in self.sockets.values():
            for sock in sockets:
                if sock is not None:
                    sock.close()
        self.sockets.clear()

    async def _close(self) -> None:
        self._close_sockets()
        for slot in self.slots:
            if slot.channel is not None:
                slot.channel.close()
        if self.view is not None and self.view.ready:
            await self.view.shutdown()
        if self.admin is not None:
            await self.admin.close()

    # -- sockets ---------------------------------------------------------------------------------

    def _bind(
        self, config: Config, old: dict[str, list[socket.socket | None]]
    ) -> dict[str, list[socket.socket | None]]:
        """The listening sockets for ``config``: kept ones reused, new ones bound (and logged).

        A socket is kept for a listener of the same name and bind, or of the same fixed address
        (a rename). Raises OSError (after closing what it bound) if an address can't be bound.
        """
        by_address = {self.binds[name]: name for name in old if self.binds[name].port != 0}
        sockets: dict[str, list[socket.socket | None]] = {}
        binds: dict[str, Address] = {}
        bound: dict[str, Address] = {}
        opened: list[socket.socket] = []
        reuse_port = self.sharing == "reuseport"
        try:
            for listener in config.listeners:
                if listener.mode == "dns":
                    continue  # the view serves dns listeners itself
                previous = listener.name if self.binds.get(listener.name) == listener.bind else None
                if previous is None or previous not in old:
                    previous = by_address.get(listener.bind) if listener.bind.port != 0 else None
                if previous is not None and previous in old:
                    sockets[listener.name] = old[previous]
                    binds[listener.name] = listener.bind
                    bound[listener.name] = self.bound[previous]
                    continue
                count = listener.accept_sockets * (len(self.slots) if reuse_port else 1)
                # reuseport: joinable even when single, so a released share can be bound again
                fresh = bind_sockets(listener.bind, count, backlog=listener.backlog, reuse_port=reuse_port or None)
                opened += fresh
                sockets[listener.name] = list(fresh)
                binds[listener.name] = listener.bind
                bound[listener.name] = actual = bound_address(fresh[0])
                log.info("listener %s (%s) on %s", listener.name, listener.mode, actual)
        except BaseException:
            for sock in opened:
                sock.close()
            raise
        self.binds = binds
        self.bound = bound
        return sockets

    def _share(self, slot: WorkerSlot, group: list[socket.socket | None]) -> range:
        """The positions in a listener's socket ``group`` that ``slot``'s worker serves: with
        reuseport its own ``accept_sockets`` (the group holds that many per worker, worker 0's
        first); shared, all of them."""
        if self.sharing != "reuseport":
            return range(len(group))
        per_worker = len(group) // len(self.slots)
        return range(slot.index * per_worker, (slot.index + 1) * per_worker)

    def _slot_sockets(self, slot: WorkerSlot) -> tuple[list[str], list[int]]:
        """The descriptors ``slot``'s worker gets and, for each, its listener's name (a name
        repeats for each of its sockets, as ``lbproxy.runtime.worker.adopt_sockets`` reads them).

        A released reuseport socket is bound again here. Raises OSError if that fails.
        """
        names: list[str] = []
        fds: list[int] = []
        for name, group in self.sockets.items():
            for index in self._share(slot, group):
                sock = group[index]
                if sock is None:
                    backlog = next((l.backlog for l in self.config.listeners if l.name == name), 1024)
                    sock = group[index] = bind_socket(self.bound[name], backlog=backlog, reuse_port=True)
                names.append(name)
                fds.append(sock.fileno())
        return names, fds

    def _release_sockets(self, slot: WorkerSlot) -> None:
        """Reuseport: close the sockets of a worker that is down for a while, so the kernel stops
        queueing new connections where nobody accepts them (the others take them)."""
        if self.sharing != "reuseport":
            return
        released = 0
        for group in self.sockets.values():
            for index in self._share(slot, group):
                sock = group[index]
                if sock is not None:
                    sock.close()
                    group[index] = None
                    released += 1
        if released:
            log.warning("worker %d keeps failing: its %d sockets are closed until it runs again", slot.index, released)

    # -- workers ---------------------------------------------------------------------------------

    async def _supervise(self, slot: WorkerSlot) -> None:
        """Keep a worker running in ``slot`` until stopping, restarting it with backoff."""
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN
        while not self.stopping:
            started = loop.time()
            code: int | None = None
            try:
                await self._spawn(slot)
            except OSError as exc:
                log.error("worker %d: cannot start a process: %s", slot.index, exc)
            else:
                assert slot.process is not None
                code = await slot.process.wait()
            self._gone(slot)
            if self.stopping:
                break
            if not self.running:
                log.error("worker %d (pid %s) %s during startup", slot.index, slot.pid, describe_exit(code))
                self._startup_failed.set()
                break
            if loop.time() - started >= STABLE_AFTER:
                backoff = BACKOFF_MIN
            slot.state = "restarting"
            log.error(
                "worker %d (pid %s) %s; restarting it in %gs", slot.index, slot.pid, describe_exit(code), backoff
            )
            if backoff >= RELEASE_AFTER:
                self._release_sockets(slot)
            try:
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            except TimeoutError:
                pass
            backoff = min(backoff * 2, BACKOFF_MAX)
            if not self.stopping:
                slot.restarts += 1
        slot.state = "stopped"

    async def _spawn(self, slot: WorkerSlot) -> None:
        """Start a worker process for ``slot`` and send it ``init``. Raises OSError."""
        names, fds = self._slot_sockets(slot)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            args = [
                sys.executable, "-m", "lbproxy", "run", "-c", self.config.source, "--log-level", self.log_level,
                "--worker-channel", str(child.fileno()), "--worker-index", str(slot.index),
            ]  # fmt: skip
            slot.process = await asyncio.create_subprocess_exec(
                *args, pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=_worker_env()
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        slot.pid = slot.process.pid
        slot.state = "starting"
        slot.ready.clear()
        slot.channel = ControlChannel(parent, functools.partial(self._on_message, slot), name=f"worker {slot.index}")
        assert self.view is not None
        slot.channel.send(
            {
                "op": "init",
                "index": slot.index,
                "text": self.text,
                "source": self.config.source,
                "sockets": names,
                "discovered": {pool: to_wire(b) for pool, b in self.view.discovered.items()},
                "backends": self._backend_state(),
            },
            fds,
        )

    def _on_message(self, slot: WorkerSlot, message: Message, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        if message.get("op") == "ready":
            slot.state = "running"
            slot.pid = int(message["pid"])
            slot.ready.set()
            log.info("worker %d (pid %d) ready", slot.index, slot.pid)
        else:
            log.warning("worker %d: unexpected message %r", slot.index, message.get("op"))

    def _gone(self, slot: WorkerSlot) -> None:
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = None
        slot.ready.clear()
        if slot.last_metrics is not None and self.view is not None:
            try:
                self.departed = fold_departed(self.departed, slot.last_metrics, snapshot(self.view))
            except Exception:  # noqa: BLE001 - metrics bookkeeping must never stop supervision
                log.exception("worker %d: could not keep its counters", slot.index)
            slot.last_metrics = None

    def _backend_state(self) -> dict[str, dict[str, dict[str, object]]]:
        assert self.view is not None
        return {
            pool.name: {
                b.label: {"checked_up": b.checked_up, "admin": b.admin, "weight": b.base_weight} for b in pool.backends
            }
            for pool in self.view.pools.values()
        }

    def _channels(self, *, starting: bool) -> list[tuple[WorkerSlot, ControlChannel]]:
        """Open channels of running workers (and of starting ones when ``starting``)."""
        wanted = ("running", "starting") if starting else ("running",)
        return [
            (s, s.channel) for s in self.slots if s.channel is not None and not s.channel.is_closed and s.state in wanted
        ]

    def _broadcast(self, message: Message) -> None:
        """Send to every worker that has a channel (starting ones too: their init came first)."""
        for slot, channel in self._channels(starting=True):
            try:
                channel.send(message)
            except ChannelClosed:
                log.debug("worker %d: channel closed", slot.index)

    async def _ask_all(self, message: Message, *, starting: bool = False, timeout: float = FANOUT_TIMEOUT) -> list[Message | None]:
        """Each worker's answer to ``message`` (None for a worker that is down or did not answer)."""
        channels = {s.index: c for s, c in self._channels(starting=starting)}

        async def ask(slot: WorkerSlot) -> Message | None:
            channel = channels.get(slot.index)
            if channel is None:
                return None
            try:
                return await channel.request(message, timeout)
            except ChannelClosed:
                return None
            except TimeoutError:
                log.warning("worker %d did not answer %s within %gs", slot.index, message.get("op"), timeout)
                return None

        return list(await asyncio.gather(*(ask(s) for s in self.slots)))

    # -- what the view tells the workers ---------------------------------------------------------

    def _verdict(self, pool: str, backend: Backend, detail: str) -> None:
        result = "passed" if backend.checked_up else "failed"
        self._broadcast(
            {"op": "verdict", "pool": pool, "backend": backend.label, "up": backend.checked_up,
             "reason": f"health check {result}: {detail}"}
        )  # fmt: skip

    def _members(self, pool: str, backends: tuple[BackendConfig, ...]) -> None:
        self._broadcast({"op": "members", "pool": pool, "backends": to_wire(backends)})

    # -- AdminTarget -----------------------------------------------------------------------------

    async def status_document(self) -> dict[str, object]:
        assert self.view is not None
        answers = await self._ask_all({"op": "status"})
        view = self.view.status()
        view.update(
            ready=self.ready,
            uptime_seconds=round(time.time() - self.started_at, 3),
            reloads=dict(self.reloads),
        )
        reports = [
            {"index": s.index, "pid": s.pid, "state": s.state, "restarts": s.restarts,
             "status": a.get("status") if a is not None else None}
            for s, a in zip(self.slots, answers)
        ]  # fmt: skip
        document = merge_status(view, reports)
        order = {listener.name: i for i, listener in enumerate(self.config.listeners)}
        document["listeners"].sort(key=lambda item: order.get(item["name"], len(order)))
        document["supervisor"] = {"pid": os.getpid(), "socket_sharing": self.sharing}
        return document

    async def metrics_text(self) -> bytes:
        assert self.view is not None
        answers = await self._ask_all({"op": "metrics"})
        snaps: list[Snapshot] = []
        for slot, answer in zip(self.slots, answers):
            if answer is not None and "metrics" in answer:
                slot.last_metrics = answer["metrics"]
                snaps.append(answer["metrics"])
        view = snapshot(self.view)
        view["reloads"] = dict(self.reloads)
        view["last_reload_success"] = self.last_reload_success
        merged = merge_metrics(view, snaps, self.departed)
        merged["workers"] = {
            "running": sum(1 for s in self.slots if s.state == "running"),
            "restarts": sum(s.restarts for s in self.slots),
        }
        return render_snapshot(merged)

    async def backend_action(
        self, pool_name: str, label: str, action: str, weight: int | None
    ) -> tuple[int, dict[str, object] | str]:
        assert self.view is not None
        pool = self.view.pools.get(pool_name)
        if pool is None:
            return 404, f"no pool {pool_name!r}\n"
        backend = pool.by_label.get(label)
        if backend is None:
            return 404, f"pool {pool_name!r} has no backend {label!r}\n"
        apply_backend_action(pool, backend, action, weight)
        message = {"op": "action", "pool": pool_name, "backend": label, "action": action, "weight": weight}
        answers = await self._ask_all(message, starting=True)
        view = self.view.backend_status(pool, backend)
        view["worker_states"] = [a.get("state") if a is not None else None for a in answers]
        return 200, view

    async def reload_from_file(self) -> tuple[bool, list[str]]:
        """Validate the file, then apply it to the view and to every worker (one reload at a time).

        Returns ``(applied, messages)`` like ``Daemon.reload_from_file``.
        """
        async with self._reload_lock:
            source = self.config.source
            try:
                text = _read(source)
                config = self._fix_workers(load_config_text(text, source))
            except ConfigError as exc:
                self.reloads["failure"] += 1
                for problem in exc.problems:
                    log.error("reload refused: %s", problem)
                log.error("reload refused: %d error(s) in %s; the running configuration is kept", len(exc.problems), source)
                return False, exc.problems
            assert self.view is not None
            old = self.config
            try:
                sockets = self._bind(config, self.sockets)
            except OSError as exc:
                self.reloads["failure"] += 1
                log.error("reload refused: could not open a listener: %s; the running configuration is kept", exc)
                return False, [f"{source}: cannot bind: {exc}"]
            try:
                notes = await self.view.reload(config)
            except OSError as exc:
                self.reloads["failure"] += 1
                log.error("reload: could not open a dns listener: %s", exc)
                notes = [f"{source}: cannot bind: {exc}"]
            notes += self._admin_notes(old, config) + self._socket_notes(old, config, sockets)
            retired = [
                s for name, group in self.sockets.items() for s in group if s is not None and sockets.get(name) is not group
            ]
            self.sockets, self.config, self.text = sockets, config, text
            applied = await self._reload_workers()
            for sock in retired:
                if all(sock not in group for group in sockets.values()):
                    sock.close()
            self.reloads["success"] += 1
            self.last_reload_success = time.time()
            log.info(
                "configuration reloaded from %s (%d of %d workers applied it)", source, applied, len(self.slots)
            )
            return True, notes

    def _fix_workers(self, config: Config) -> Config:
        """With ``--workers``, the file's ``workers`` is not what runs (and a change needs no note)."""
        return dataclasses.replace(config, workers=len(self.slots)) if self.workers_from_cli else config

    def _admin_notes(self, old: Config, new: Config) -> list[str]:
        notes: list[str] = []
        if (old.admin is None) != (new.admin is None):
            notes.append("admin listener added or removed: needs a restart")
        elif self.admin is not None and old.admin is not None and new.admin is not None:
            if old.admin.bind != new.admin.bind:
                notes.append(f"admin.bind changed to {new.admin.bind}: needs a restart")
            self.admin.config = dataclasses.replace(new.admin, bind=old.admin.bind)
        for note in notes:
            log.warning("reload: %s", note)
        return notes

    def _socket_notes(self, old: Config, new: Config, sockets: dict[str, list[socket.socket | None]]) -> list[str]:
        """Restart notes for listeners that keep their sockets (``reload.socket_notes``)."""
        before = {listener.name: listener for listener in old.listeners}
        notes: list[str] = []
        for listener in new.listeners:
            was = before.get(listener.name)
            if was is not None and listener.name in sockets and sockets[listener.name] is self.sockets.get(listener.name):
                notes += socket_notes(was, listener)
        for note in notes:
            log.warning("reload: %s", note)
        return notes

    async def _reload_workers(self) -> int:
        """Send the running config to every worker; restart those that cannot apply it."""
        assert self.view is not None
        discovered = {pool: to_wire(b) for pool, b in self.view.discovered.items()}

        async def one(slot: WorkerSlot, channel: ControlChannel) -> bool:
            try:
                names, fds = self._slot_sockets(slot)
            except OSError as exc:
                names, fds = [], []
                log.error("worker %d: cannot bind its sockets again: %s", slot.index, exc)
            message = {"op": "reload", "text": self.text, "source": self.config.source, "sockets": names,
                       "discovered": discovered}  # fmt: skip
            try:
                answer = await channel.request(message, RELOAD_TIMEOUT, fds)
            except (ChannelClosed, TimeoutError) as exc:
                answer = {"applied": False, "error": type(exc).__name__}
            if answer.get("applied"):
                return True
            log.error("worker %d could not apply the new configuration (%s): restarting it", slot.index, answer.get("error"))
            if slot.process is not None and slot.process.returncode is None:
                _signal(slot.process, signal.SIGTERM)
            return False

        results = await asyncio.gather(*(one(s, c) for s, c in self._channels(starting=True)))
        return sum(results)


def _read(path: str) -> str:
    """The config file's text; ConfigError with ``lbproxy check``'s message when unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: cannot read: not valid UTF-8 ({exc.reason})"]) from exc


def _worker_env() -> dict[str, str]:
    """The environment of a worker: ours, with lbproxy importable whatever the working directory."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(lbproxy.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except ProcessLookupError:
        pass

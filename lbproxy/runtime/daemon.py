"""Daemon: builds pools and listeners from a Config, runs them, and shuts them down gracefully.

Lifecycle: ``start()`` binds everything (raising OSError if a bind fails, after closing what it
had opened); ``run_until_stopped()`` waits for ``request_stop()`` (signal handlers call it) and
then ``shutdown()``: /readyz fails at once, listeners keep accepting for ``shutdown_delay``, then
stop accepting, in-flight work gets ``drain_timeout`` to finish, and the rest is aborted.

Roles. ``single`` (the default) is all of lbproxy in one process. With ``workers: N`` the work
is split (see ``lbproxy.runtime.supervisor``): each ``worker`` serves the data listeners with
passive health only and no admin listener, taking health verdicts, discovered backends and admin
actions from the supervisor; the supervisor's ``view`` holds the one health view (active checks,
DNS discovery) and serves the ``dns`` listeners, with no data listeners.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from lbproxy import __version__
from lbproxy.accesslog import AccessLog
from lbproxy.build import describe, warn_if_stale
from lbproxy.admin.server import AdminServer, apply_backend_action, listener_status
from lbproxy.config.loader import load_config
from lbproxy.config.model import BackendConfig, Config, ListenerConfig, PoolConfig
from lbproxy.discovery.members import effective_pool_config
from lbproxy.errors import ConfigError
from lbproxy.health.checker import HealthChecker
from lbproxy.health.hysteresis import Hysteresis
from lbproxy.l4.splicer import TcpListener
from lbproxy.l7.listener import HttpListener, UpstreamRegistry
from lbproxy.net.listener import BaseListener
from lbproxy.pool.backend import Backend
from lbproxy.pool.pool import Pool
from lbproxy.runtime.health_roles import (
    OnVerdict,
    PassiveHealthChecker,
    ReportingHealthChecker,
)

if TYPE_CHECKING:
    from lbproxy.discovery.resolver import Discovery

log = logging.getLogger("lbproxy.daemon")

Role = Literal["single", "worker", "view"]
OnMembers = Callable[[str, tuple[BackendConfig, ...]], None]


class Daemon:
    """One running lbproxy: its pools, listeners and admin server (see the roles above).

    ``sockets`` maps listener names to pre-bound listening sockets (one or several on the
    listener's address); each group is used once, by the first listener of that name that
    starts. ``on_verdict`` (view) is told every up/down verdict of the active checks;
    ``on_members`` (single, view) every change DNS discovery makes to a pool.
    """

    def __init__(
        self,
        config: Config,
        *,
        sockets: dict[str, list[socket.socket]] | None = None,
        role: Role = "single",
        on_verdict: OnVerdict | None = None,
        on_members: OnMembers | None = None,
    ) -> None:
        self.config = config
        self.role: Role = role
        self.pools: dict[str, Pool] = {}
        self.listeners: dict[str, BaseListener] = {}
        self.upstreams = UpstreamRegistry()
        self.health: HealthChecker
        if role == "worker":
            self.health = PassiveHealthChecker()
        elif on_verdict is not None:
            self.health = ReportingHealthChecker(on_verdict)
        else:
            self.health = HealthChecker()
        self.on_members = on_members
        self.discovery: Discovery | None = None
        self.discovered: dict[str, tuple[BackendConfig, ...]] = {}  # pool -> backends found in DNS
        self._registry: object | None = None
        self.access_log: AccessLog | None = AccessLog(config.access_log) if config.access_log else None
        self.admin: AdminServer | None = None
        self.ready = False
        self.started_at = time.time()
        self._sockets = sockets or {}
        self._stop: asyncio.Event | None = None
        self._retiring: set[asyncio.Task[object]] = set()
        self._reload_lock = asyncio.Lock()
        self.reloads = {"success": 0, "failure": 0}
        self.last_reload_success = time.time()

    async def start(self, prepare: Callable[[Daemon], None] | None = None) -> None:
        """Build and bind everything. Raises OSError if an address can't be bound.

        Pools with ``dns`` backends are looked up first (each lookup bounded). ``prepare`` is
        called once the pools exist, before any check runs or any listener accepts.
        """
        self._stop = asyncio.Event()
        config = self.config
        if self.role != "worker" and any(p.dns_backends for p in config.pools.values()):
            await self._reconfigure_discovery(config, initial=True)
        self.pools = {name: Pool(self.effective(pool_config)) for name, pool_config in config.pools.items()}
        if prepare is not None:
            prepare(self)
        self.health.start(self.pools.values())
        try:
            for listener_config in config.listeners:
                if not self.serves(listener_config):
                    continue
                listener = self.make_listener(listener_config)
                self.listeners[listener_config.name] = listener
                await listener.start()
            if config.admin is not None and self.role == "single":
                handed = self._sockets.pop("admin", None)
                self.admin = AdminServer(self, config.admin, sock=handed[0] if handed else None)
                await self.admin.start()
        except BaseException:
            await self._close_now()
            raise
        self.ready = True
        if self.role != "worker":
            warn_if_stale()
        if self.role == "single":
            log.info(
                "lbproxy %s (%s) running: %d listeners, %d pools",
                __version__, describe(), len(self.listeners), len(self.pools),
            )
        elif self.role == "worker":
            log.info("worker started: %d listeners, %d pools", len(self.listeners), len(self.pools))
        else:
            log.info("health view started: %d pools, %d dns listeners", len(self.pools), len(self.listeners))

    def serves(self, config: ListenerConfig) -> bool:
        """Whether this daemon's role opens ``config``: dns listeners live in the view."""
        if self.role == "single":
            return True
        return (config.mode == "dns") == (self.role == "view")

    def effective(self, config: PoolConfig) -> PoolConfig:
        """``config`` with the backends DNS discovery found for it (what its ``Pool`` is built from)."""
        return effective_pool_config(config, self.discovered.get(config.name, ()))

    async def _reconfigure_discovery(self, config: Config, initial: bool = False) -> None:
        """Start or follow DNS discovery for ``config`` and refresh ``self.discovered`` from it."""
        from lbproxy.discovery.resolver import Discovery

        if self.discovery is None:
            if not any(p.dns_backends for p in config.pools.values()):
                self.discovered = {}
                return
            self.discovery = Discovery(self._discovery_changed)
            if initial:
                await self.discovery.start(config.pools)
            else:
                self.discovery.reconfigure(config.pools)
        else:
            self.discovery.reconfigure(config.pools)
        self.discovered = {
            name: self.discovery.backends(name) for name, pool in config.pools.items() if pool.dns_backends
        }

    def _discovery_changed(self, pool: str, backends: tuple[BackendConfig, ...]) -> None:
        self.apply_discovered(pool, backends)
        if self.on_members is not None:
            self.on_members(pool, backends)

    def apply_discovered(self, pool_name: str, backends: tuple[BackendConfig, ...]) -> None:
        """Make ``backends`` the DNS-found members of a pool, as a reload would.

        Backends gone from DNS take no new work while what they carry finishes; backends new to
        the pool wait for a passing health check before they get traffic (when the pool has one).
        """
        pool = self.pools.get(pool_name)
        pool_config = self.config.pools.get(pool_name)
        if pool is None or pool_config is None:
            return
        self.discovered[pool_name] = backends
        old = pool.config
        added, removed = pool.reconfigure(self.effective(pool_config))
        for backend in removed:
            self.health.remove_backend(pool, backend)
            self.upstreams.forget(backend)
            log.info("pool %s backend %s gone from DNS: removed (in-flight work finishes)", pool_name, backend.label)
        self.health.reconfigure_pool(pool, old, added)
        check = pool.config.health_check
        for backend in added:
            log.info("pool %s backend %s found in DNS", pool_name, backend.label)
            if check is None:
                continue
            health = self.health.pools.get(pool_name)
            record = health.records.get(backend) if health is not None else None
            if record is not None:
                record.hysteresis = Hysteresis(check.healthy_threshold, check.unhealthy_threshold, up=False)
            backend.set_checked_up(False, "new from DNS: waiting for a passing health check")

    def adopt_sockets(self, sockets: dict[str, list[socket.socket]]) -> None:
        """Pre-bound sockets for listeners that start later (a reload), by listener name."""
        for name, group in sockets.items():
            for previous in self._sockets.pop(name, ()):
                previous.close()
            self._sockets[name] = group

    def close_unused_sockets(self) -> None:
        """Close the pre-bound sockets no listener took (ours are copies; the owner keeps its own)."""
        for group in self._sockets.values():
            for sock in group:
                sock.close()
        self._sockets.clear()

    def make_listener(self, config: ListenerConfig) -> BaseListener:
        """A listener for ``config`` (not started), wired to this daemon's pools."""
        sockets = self._sockets.pop(config.name, [])
        if not sockets and self.role == "worker":  # binding here would open a port of its own
            raise OSError(f"no socket from the supervisor for listener {config.name}")
        if config.mode == "tcp":
            assert config.pool is not None
            tcp = TcpListener(config, self.pools[config.pool], access_log=self.access_log, sockets=sockets)
            tcp.sni_routes = [(route.server_name, self.pools[route.pool]) for route in config.sni_routes]
            return tcp
        if config.mode == "dns":
            from lbproxy.dns.listener import DnsListener

            return DnsListener(config, self.pools, sockets=sockets)
        return HttpListener(config, self.pools, self.upstreams, access_log=self.access_log, sockets=sockets)

    def retire(self, listener: BaseListener) -> None:
        """Drain a listener that left the config, in the background, bounded by drain_timeout."""
        task = asyncio.get_running_loop().create_task(listener.drain(self.config.drain_timeout))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def reload(self, config: Config) -> list[str]:
        """Apply a validated config in place; returns notes on settings that need a restart.

        Counted in ``lbproxy_config_reloads_total``. Raises OSError if a new listener can't bind.
        """
        from lbproxy.runtime.reload import apply

        try:
            notes = await apply(self, config)
        except OSError:
            self.reloads["failure"] += 1
            raise
        self.reloads["success"] += 1
        self.last_reload_success = time.time()
        if self.role == "single":  # with workers, the supervisor says it once for all of them
            log.info("configuration reloaded from %s", config.source)
        return notes

    async def reload_from_file(self, path: str | None = None) -> tuple[bool, list[str]]:
        """Re-read the config file; an invalid one is refused and the running config kept.

        Returns ``(applied, messages)``: the problems (as ``lbproxy check`` prints them) when
        refused, or the restart notes when applied.
        """
        async with self._reload_lock:
            source = path or self.config.source
            try:
                config = load_config(source)
            except ConfigError as exc:
                self.reloads["failure"] += 1
                for problem in exc.problems:
                    log.error("reload refused: %s", problem)
                log.error("reload refused: %d error(s) in %s; the running configuration is kept", len(exc.problems), source)
                return False, exc.problems
            try:
                notes = await self.reload(config)
            except OSError as exc:
                log.error("reload: could not open a listener: %s", exc)
                return False, [f"{source}: cannot bind: {exc}"]
            return True, notes

    def request_reload(self) -> None:
        """SIGHUP: reload the config file in the background (one reload at a time)."""
        task = asyncio.get_running_loop().create_task(self.reload_from_file())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def request_stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler, more than once)."""
        if self._stop is not None and not self._stop.is_set():
            log.info("shutdown requested")
            self._stop.set()

    async def run_until_stopped(self) -> None:
        assert self._stop is not None, "start() first"
        await self._stop.wait()
        await self.shutdown()

    async def shutdown(self) -> int:
        """Drain and stop. Returns how many connections had to be aborted at the drain timeout."""
        self.ready = False
        if self.config.shutdown_delay > 0 and self.listeners:
            log.info("shutdown: still accepting for %.1fs (shutdown_delay)", self.config.shutdown_delay)
            await asyncio.sleep(self.config.shutdown_delay)
        for listener in self.listeners.values():
            listener.stop_accepting()
        timeout = self.config.drain_timeout
        quiet = self.role == "view" and not self.listeners  # the supervisor speaks for it
        log.log(logging.DEBUG if quiet else logging.INFO, "shutdown: draining connections for up to %.1fs", timeout)
        results = await asyncio.gather(*(listener.drain(timeout) for listener in self.listeners.values()))
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=timeout)
        self.upstreams.close_all()
        await self.health.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        if self.admin is not None:
            await self.admin.close()
        if self.access_log is not None:
            self.access_log.close()
        aborted = sum(results)
        log.log(logging.DEBUG if quiet else logging.INFO, "shutdown complete (%d connections aborted)", aborted)
        return aborted

    async def _close_now(self) -> None:
        await self.health.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        for listener in self.listeners.values():
            listener.stop_accepting()
        if self.admin is not None:
            await self.admin.close()

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the access log file (logrotate)."""
        if self.access_log is not None:
            log.info("reopening the access log")
            self.access_log.reopen()

    def listener_address(self, name: str) -> tuple[str, int]:
        """``(host, port)`` a listener is bound to; handy with port 0."""
        address = self.listeners[name].address
        return address.host, address.port

    def backend_status(self, pool: Pool, backend: Backend) -> dict[str, object]:
        view: dict[str, object] = {
            "address": backend.label,
            "state": backend.state.value,
            "admin": backend.admin,
            "checked_up": backend.checked_up,
            "ejected": backend.ejected,
            "weight": backend.base_weight,
            "effective_weight": round(backend.weight, 3),
            "active": backend.active,
            "connections_total": backend.connections_total,
            "failures_total": backend.failures_total,
            "responses_5xx": backend.responses_5xx,
            "errors": dict(backend.errors),
        }
        health = self.health.pools.get(pool.name)
        record = health.records.get(backend) if health is not None else None
        if record is not None:
            view["last_check"] = {
                "result": record.last_result or None,
                "detail": record.last_detail or None,
                "time": record.last_check_time or None,
            }
            view["checks_passed"] = record.checks_passed
            view["checks_failed"] = record.checks_failed
            view["ejections_total"] = record.ejections_total
        return view

    def status(self) -> dict[str, object]:
        """The JSON document served at /status."""
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "ready": self.ready,
            "reloads": dict(self.reloads),
            "listeners": [listener_status(listener) for listener in self.listeners.values()],
            "pools": [self.pool_status(pool) for pool in self.pools.values()],
        }

    def pool_status(self, pool: Pool) -> dict[str, object]:
        view: dict[str, object] = {
            "name": pool.name,
            "strategy": pool.config.strategy,
            "no_backend_total": pool.no_backend_total,
            "health_check": pool.config.health_check.type if pool.config.health_check else None,
            "backends": [self.backend_status(pool, backend) for backend in pool.backends],
        }
        discovery = self.discovery.pools.get(pool.name) if self.discovery is not None else None
        if discovery is not None:
            view["discovery"] = discovery.status()
        return view

    # -- what the admin listener serves (lbproxy.admin.server.AdminTarget) ----------------------

    async def status_document(self) -> dict[str, object]:
        return self.status()

    async def metrics_text(self) -> bytes:
        from lbproxy.admin.metrics import make_registry, render

        if self._registry is None:
            self._registry = make_registry(self)
        return render(self._registry)  # type: ignore[arg-type]

    async def backend_action(
        self, pool_name: str, label: str, action: str, weight: int | None
    ) -> tuple[int, dict[str, object] | str]:
        """Apply an admin action (drain, disable, enable, weight) to one backend."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return 404, f"no pool {pool_name!r}\n"
        backend = pool.by_label.get(label)
        if backend is None:
            return 404, f"pool {pool_name!r} has no backend {label!r}\n"
        apply_backend_action(pool, backend, action, weight)
        return 200, self.backend_status(pool, backend)

"""Daemon: builds pools and listeners from a Config, runs them, and shuts them down gracefully.

Lifecycle: ``start()`` binds everything (raising OSError if a bind fails, after closing what it
had opened); ``run_until_stopped()`` waits for ``request_stop()`` (signal handlers call it) and
then ``shutdown()``: /readyz fails at once, listeners keep accepting for ``shutdown_delay``, then
stop accepting, in-flight work gets ``drain_timeout`` to finish, and the rest is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

from lbproxy import __version__
from lbproxy.accesslog import AccessLog
from lbproxy.admin.server import AdminServer, listener_status
from lbproxy.config.loader import load_config
from lbproxy.config.model import Config, ListenerConfig
from lbproxy.errors import ConfigError
from lbproxy.health.checker import HealthChecker
from lbproxy.l4.splicer import TcpListener
from lbproxy.l7.listener import HttpListener, UpstreamRegistry
from lbproxy.net.listener import BaseListener
from lbproxy.pool.backend import Backend
from lbproxy.pool.pool import Pool

log = logging.getLogger("lbproxy.daemon")


class Daemon:
    """One running lbproxy: its pools, listeners and admin server."""

    def __init__(self, config: Config, *, sockets: dict[str, socket.socket] | None = None) -> None:
        self.config = config
        self.pools: dict[str, Pool] = {}
        self.listeners: dict[str, BaseListener] = {}
        self.upstreams = UpstreamRegistry()
        self.health = HealthChecker()
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

    async def start(self) -> None:
        """Build and bind everything. Raises OSError if an address can't be bound."""
        self._stop = asyncio.Event()
        config = self.config
        self.pools = {name: Pool(pool_config) for name, pool_config in config.pools.items()}
        self.health.start(self.pools.values())
        try:
            for listener_config in config.listeners:
                listener = self.make_listener(listener_config)
                self.listeners[listener_config.name] = listener
                await listener.start()
            if config.admin is not None:
                self.admin = AdminServer(self, config.admin, sock=self._sockets.get("admin"))
                await self.admin.start()
        except BaseException:
            await self._close_now()
            raise
        self.ready = True
        log.info(
            "lbproxy %s running: %d listeners, %d pools", __version__, len(self.listeners), len(self.pools)
        )

    def make_listener(self, config: ListenerConfig) -> BaseListener:
        """A listener for ``config`` (not started), wired to this daemon's pools."""
        sock = self._sockets.get(config.name)
        if config.mode == "tcp":
            assert config.pool is not None
            return TcpListener(config, self.pools[config.pool], sock=sock)
        if config.mode == "dns":
            from lbproxy.dns.listener import DnsListener

            return DnsListener(config, self.pools, sock=sock)
        return HttpListener(config, self.pools, self.upstreams, access_log=self.access_log, sock=sock)

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
        if self.config.shutdown_delay > 0:
            log.info("shutdown: still accepting for %.1fs (shutdown_delay)", self.config.shutdown_delay)
            await asyncio.sleep(self.config.shutdown_delay)
        for listener in self.listeners.values():
            listener.stop_accepting()
        timeout = self.config.drain_timeout
        log.info("shutdown: draining connections for up to %.1fs", timeout)
        results = await asyncio.gather(*(listener.drain(timeout) for listener in self.listeners.values()))
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=timeout)
        self.upstreams.close_all()
        await self.health.stop()
        if self.admin is not None:
            await self.admin.close()
        if self.access_log is not None:
            self.access_log.close()
        aborted = sum(results)
        log.info("shutdown complete (%d connections aborted)", aborted)
        return aborted

    async def _close_now(self) -> None:
        await self.health.stop()
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
            "listeners": [listener_status(listener) for listener in self.listeners.values()],
            "pools": [
                {
                    "name": pool.name,
                    "strategy": pool.config.strategy,
                    "no_backend_total": pool.no_backend_total,
                    "health_check": pool.config.health_check.type if pool.config.health_check else None,
                    "backends": [self.backend_status(pool, backend) for backend in pool.backends],
                }
                for pool in self.pools.values()
            ],
        }

"""Applying a new Config to a running Daemon without dropping connections.

What changes in place (Traefik's "dynamic" settings): pools (backends added, removed, re-weighted;
strategies; health checks; outlier and slow-start settings), routes, listener limits and timeouts,
the admin token, the access log, drain_timeout and shutdown_delay. Backends that stay keep their
object, health state and counters. In-flight requests, keep-alive connections, TCP connections
and tunnels go on with the pool and backend they had.

Listeners added are opened; listeners removed stop accepting and drain in the background (bounded
by drain_timeout). A listener whose bind address or mode changed is replaced: the old one drains,
the new one binds. What needs a restart (reported by ``apply``): ``admin.bind``, ``workers``, and
a kept listener's ``backlog`` and ``accept_sockets`` (its sockets stay as they were bound).

Pools with ``dns`` backends are rebuilt from their static backends plus what discovery last found
(a reload does not forget discovered backends); a worker is handed that set by its supervisor.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from lbproxy.accesslog import AccessLog
from lbproxy.config.model import Config, ListenerConfig
from lbproxy.l4.splicer import TcpListener
from lbproxy.l7.listener import HttpListener
from lbproxy.net.listener import NetworkSet
from lbproxy.pool.pool import Pool

if TYPE_CHECKING:
    from lbproxy.runtime.daemon import Daemon

log = logging.getLogger("lbproxy.reload")


async def apply(daemon: Daemon, new: Config) -> list[str]:
    """Reconcile ``daemon`` with ``new``. Returns notes on settings that need a restart.

    Raises OSError if a new listener can't bind; everything else was applied by then, and the
    listener that failed is simply not opened (the caller reports the error).
    """
    notes: list[str] = []
    old = daemon.config
    if daemon.role != "worker":
        await daemon._reconfigure_discovery(new)
    _reconcile_pools(daemon, new)
    daemon.config = new  # before any await: discovery updates from now on use the new pools
    notes += await _reconcile_listeners(daemon, new)
    if old.workers != new.workers:
        notes.append(f"workers changed to {new.workers}: needs a restart")
    if daemon.role == "single":  # with workers, the supervisor owns the admin listener
        if (old.admin is None) != (new.admin is None):
            notes.append("admin listener added or removed: needs a restart")
        elif daemon.admin is not None and old.admin is not None and new.admin is not None:
            if old.admin.bind != new.admin.bind:
                notes.append(f"admin.bind changed to {new.admin.bind}: needs a restart")
            daemon.admin.config = dataclasses.replace(new.admin, bind=old.admin.bind)
    if old.access_log != new.access_log:
        if daemon.access_log is not None:
            daemon.access_log.close()
        daemon.access_log = AccessLog(new.access_log) if new.access_log else None
        for listener in daemon.listeners.values():
            listener.access_log = daemon.access_log  # type: ignore[attr-defined]
    for note in notes:
        log.warning("reload: %s", note)
    return notes


def _reconcile_pools(daemon: Daemon, new: Config) -> None:
    for name, raw_config in new.pools.items():
        pool_config = daemon.effective(raw_config)
        pool = daemon.pools.get(name)
        if pool is None:
            pool = Pool(pool_config)
            daemon.pools[name] = pool
            daemon.health.add_pool(pool)
            log.info("reload: pool %s added with %d backends", name, len(pool.backends))
            continue
        old_config = pool.config
        added, removed = pool.reconfigure(pool_config)
        for backend in removed:
            daemon.health.remove_backend(pool, backend)
            daemon.upstreams.forget(backend)
            log.info("reload: pool %s backend %s removed (in-flight work finishes)", name, backend.label)
        daemon.health.reconfigure_pool(pool, old_config, added)
        for backend in added:
            log.info("reload: pool %s backend %s added", name, backend.label)
    for name in [n for n in daemon.pools if n not in new.pools]:
        pool = daemon.pools.pop(name)
        daemon.health.remove_pool(pool)
        for backend in pool.backends:
            daemon.upstreams.forget(backend)
        log.info("reload: pool %s removed", name)


def socket_notes(old: ListenerConfig, new: ListenerConfig) -> list[str]:
    """What a reload can't change on a listener that keeps its sockets: how they were bound."""
    return [
        f"listener {new.name}: {key} changed to {getattr(new, key)}: needs a restart (or a new bind)"
        for key in ("backlog", "accept_sockets")
        if getattr(old, key) != getattr(new, key)
    ]


async def _reconcile_listeners(daemon: Daemon, new: Config) -> list[str]:
    """Update kept listeners, retire removed ones, open new ones; notes on what needs a restart."""
    notes: list[str] = []
    wanted = {lc.name: lc for lc in new.listeners if daemon.serves(lc)}
    for name, listener in list(daemon.listeners.items()):
        config = wanted.get(name)
        if config is not None and config.bind == listener.config.bind and config.mode == listener.config.mode:
            if daemon.role == "single":  # with workers, the supervisor owns the sockets
                notes += socket_notes(listener.config, config)
            if isinstance(listener, HttpListener):
                listener.update_routes(config, daemon.pools)
            elif isinstance(listener, TcpListener):
                assert config.pool is not None
                listener.config = config
                listener.pool = daemon.pools[config.pool]
                listener.idle_timeout = config.idle_timeout
                listener.sni_routes = [(r.server_name, daemon.pools[r.pool]) for r in config.sni_routes]
            elif config.mode == "dns":
                listener.update(config)  # type: ignore[attr-defined]
            listener.proxy_protocol_from = NetworkSet(config.proxy_protocol_from)
            continue
        # removed, or rebound: stop accepting now, let its connections finish in the background
        del daemon.listeners[name]
        listener.stop_accepting()
        daemon.retire(listener)
        log.info("reload: listener %s closed (draining %d connections)", name, len(listener.connections))
    for config in new.listeners:
        if config.name in daemon.listeners or not daemon.serves(config):
            continue
        listener = daemon.make_listener(config)
        await listener.start()
        daemon.listeners[config.name] = listener
        log.info("reload: listener %s opened on %s", config.name, listener.address)
    return notes


"""Pool: a named group of backends with one strategy, shared by every listener that names it."""

from __future__ import annotations

from collections.abc import Collection

from lbproxy.balancing.base import Strategy
from lbproxy.balancing.registry import create_strategy
from lbproxy.config.model import PoolConfig
from lbproxy.pool.backend import Backend
from lbproxy.stats import Histogram


class Pool:
    """Runtime state of one pool: its backends (in config order) and its strategy."""

    __slots__ = ("name", "config", "backends", "strategy", "by_label", "no_backend_total", "retries_total", "connect_durations")

    def __init__(self, config: PoolConfig) -> None:
        self.name = config.name
        self.config = config
        self.backends: list[Backend] = [Backend(b, config.name) for b in config.backends]
        self.by_label: dict[str, Backend] = {b.label: b for b in self.backends}
        self.strategy: Strategy = create_strategy(_picking_strategy(config), self.backends)
        self.no_backend_total = 0
        self.retries_total = 0  # attempts made after a failed one (failover, stale reuse), counted when made
        self.connect_durations = Histogram()  # seconds to establish upstream connections

    def reconfigure(self, config: PoolConfig) -> tuple[list[Backend], list[Backend]]:
        """Apply a reloaded config in place; returns ``(added, removed)`` backends.

        Backends whose address stays keep their object, health state and counters; their weight
        and limits follow the new config. Removed backends leave the pool at once (no new work);
        work already on them finishes. A changed strategy name builds a new strategy.
        """
        old = self.by_label
        backends: list[Backend] = []
        added: list[Backend] = []
        for backend_config in config.backends:
            label = str(backend_config.address)
            backend = old.get(label)
            if backend is None:
                backend = Backend(backend_config, config.name)
                added.append(backend)
            else:
                if backend_config.weight != backend.config.weight:
                    ramping = backend.weight != backend.base_weight
                    backend.base_weight = backend_config.weight
                    if not ramping:
                        backend.weight = backend_config.weight
                backend.config = backend_config
                backend.set_max_connections(backend_config.max_connections)
            backends.append(backend)
        kept = {b.label for b in backends}
        removed = [b for b in self.backends if b.label not in kept]
        strategy_changed = _picking_strategy(config) != _picking_strategy(self.config)
        self.config = config
        self.backends = backends
        self.by_label = {b.label: b for b in backends}
        if strategy_changed:
            self.strategy = create_strategy(_picking_strategy(config), backends)
        else:
            self.strategy.update(backends)
        return added, removed

    def pick(self, key: str | None, exclude: Collection[Backend] = ()) -> Backend | None:
        """An available backend chosen by the strategy, or None (counted) when there is none."""
        backend = self.strategy.pick(key, exclude)
        if backend is None:
            self.no_backend_total += 1
        return backend

    def __repr__(self) -> str:
        up = sum(1 for b in self.backends if b.available)
        return f"<Pool {self.name} strategy={self.config.strategy} backends={len(self.backends)} available={up}>"


def _picking_strategy(config: PoolConfig) -> str:
    """The strategy that picks backends: for ``cookie_affinity``, its cookie's ``fallback`` picks
    requests that carry no usable cookie (the cookie itself is honoured by the L7 exchange)."""
    if config.strategy == "cookie_affinity":
        return config.cookie.fallback
    return config.strategy

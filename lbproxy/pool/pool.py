"""Pool: a named group of backends with one strategy, shared by every listener that names it."""

from __future__ import annotations

from collections.abc import Collection

from lbproxy.balancing.base import Strategy
from lbproxy.balancing.registry import create_strategy
from lbproxy.config.model import PoolConfig
from lbproxy.pool.backend import Backend


class Pool:
    """Runtime state of one pool: its backends (in config order) and its strategy."""

    __slots__ = ("name", "config", "backends", "strategy", "by_label", "no_backend_total")

    def __init__(self, config: PoolConfig) -> None:
        self.name = config.name
        self.config = config
        self.backends: list[Backend] = [Backend(b, config.name) for b in config.backends]
        self.by_label: dict[str, Backend] = {b.label: b for b in self.backends}
        self.strategy: Strategy = create_strategy(config.strategy, self.backends)
        self.no_backend_total = 0

    def pick(self, key: str | None, exclude: Collection[Backend] = ()) -> Backend | None:
        """An available backend chosen by the strategy, or None (counted) when there is none."""
        backend = self.strategy.pick(key, exclude)
        if backend is None:
            self.no_backend_total += 1
        return backend

    def __repr__(self) -> str:
        up = sum(1 for b in self.backends if b.available)
        return f"<Pool {self.name} strategy={self.config.strategy} backends={len(self.backends)} available={up}>"

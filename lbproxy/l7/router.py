"""Route matching for ``http`` listeners: pure, no I/O.

Routes are tried in config order; the first whose every condition holds wins. ``host`` is
compared case-insensitively without its port; ``*.example.com`` matches any name ending in
``.example.com`` (not ``example.com`` itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lbproxy.config.model import RouteConfig

if TYPE_CHECKING:
    from lbproxy.pool.pool import Pool


class Route:
    """A compiled route: conditions plus the pool it sends to."""

    __slots__ = ("name", "config", "pool", "host_exact", "host_suffix", "path_prefix", "path_exact")

    def __init__(self, config: RouteConfig, index: int, pool: Pool) -> None:
        self.config = config
        self.name = config.name or f"route{index}"
        self.pool = pool
        match = config.match
        self.host_exact: str | None = None
        self.host_suffix: str | None = None
        if match.host is not None:
            host = match.host.lower()
            if host.startswith("*."):
                self.host_suffix = host[1:]
            else:
                self.host_exact = host
        self.path_prefix = match.path_prefix
        self.path_exact = match.path

    def matches(self, host: str, path: str) -> bool:
        """Whether a request for ``host`` (lowercase, no port) and ``path`` takes this route."""
        if self.host_exact is not None and host != self.host_exact:
            return False
        if self.host_suffix is not None and not host.endswith(self.host_suffix):
            return False
        if self.path_exact is not None and path != self.path_exact:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        return True

    def __repr__(self) -> str:
        return f"<Route {self.name} -> {self.pool.name}>"


class Router:
    """An ordered list of compiled routes."""

    __slots__ = ("routes",)

    def __init__(self, routes: Sequence[RouteConfig], pools: Mapping[str, Pool]) -> None:
        self.routes = tuple(Route(r, i, pools[r.pool]) for i, r in enumerate(routes))

    def match(self, host: str, path: str) -> Route | None:
        """The first route that takes this request, or None (the listener answers 404)."""
        for route in self.routes:
            if route.matches(host, path):
                return route
        return None

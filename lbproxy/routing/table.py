"""Compiled routes: matching (first match wins) and an explanation of why a route did not match.

``RequestView`` is what matching reads: method, host (lower-case, no port), normalised path,
query string and the raw header list. Conditions are checked cheapest first; header and query
conditions scan the header list or parse the query only when a route has them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import parse_qsl

from lbproxy.config.model import RouteConfig, ValueMatch

if TYPE_CHECKING:
    from lbproxy.pool.pool import Pool


class RequestView:
    """The parts of a request that routes look at."""

    __slots__ = ("method", "host", "path", "query", "headers", "_query_pairs")

    def __init__(
        self, method: str, host: str, path: str, query: str = "", headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.headers = headers
        self._query_pairs: list[tuple[str, str]] | None = None

    def header_values(self, name: str) -> list[str]:
        """Values of header ``name`` (lower-case), in order."""
        wanted = name.encode("latin-1")
        return [v.decode("latin-1") for n, v in self.headers if n.lower() == wanted]

    def query_values(self, name: str) -> list[str]:
        if self._query_pairs is None:
            self._query_pairs = parse_qsl(self.query, keep_blank_values=True)
        return [v for k, v in self._query_pairs if k == name]


def _value_mismatch(kind: str, condition: ValueMatch, values: list[str], pattern: re.Pattern[str] | None) -> str | None:
    label = f"{kind} {condition.name!r}"
    if condition.present is not None:
        if condition.present and not values:
            return f"{label} is absent"
        if not condition.present and values:
            return f"{label} is present"
        return None
    if not values:
        return f"{label} is absent"
    if condition.exact is not None:
        if condition.exact not in values:
            return f"{label} is {values[0]!r}, not {condition.exact!r}"
        return None
    assert pattern is not None
    if not any(pattern.search(v) for v in values):
        return f"{label} {values[0]!r} does not match /{condition.regex}/"
    return None


class Route:
    """A compiled route: its conditions, and its target pools resolved."""

    __slots__ = (
        "name",
        "config",
        "pool",
        "split",
        "split_total",
        "host_exact",
        "host_suffix",
        "path_exact",
        "path_prefix",
        "separated_prefix",
        "path_regex",
        "methods",
        "headers",
        "query",
        "matched_prefix",
        "simple",
        "request_actions",
        "response_actions",
    )

    def __init__(self, config: RouteConfig, index: int, pools: Mapping[str, Pool]) -> None:
        self.config = config
        self.name = config.name or f"route{index}"
        self.pool: Pool | None = pools[config.pool] if config.pool is not None else None
        self.split: tuple[tuple[Pool, int], ...] = tuple((pools[t.pool], t.weight) for t in config.split)
        self.split_total = sum(w for _, w in self.split)
        match = config.match
        self.host_exact: str | None = None
        self.host_suffix: str | None = None
        if match.host is not None:
            host = match.host.lower()
            if host.startswith("*."):
                self.host_suffix = host[1:]
            else:
                self.host_exact = host
        self.path_exact = match.path
        self.path_prefix = match.path_prefix
        self.separated_prefix = match.path_separated_prefix
        self.path_regex = re.compile(match.path_regex) if match.path_regex is not None else None
        self.methods = frozenset(match.methods)
        self.headers = tuple(
            (c, re.compile(c.regex) if c.regex is not None else None) for c in match.headers
        )
        self.query = tuple((c, re.compile(c.regex) if c.regex is not None else None) for c in match.query)
        self.matched_prefix = match.path_prefix or match.path_separated_prefix
        self.simple = not (self.path_regex or self.methods or self.headers or self.query or self.separated_prefix)
        from lbproxy.routing.actions import CompiledHeaderActions

        self.request_actions = CompiledHeaderActions(config.request_headers)
        self.response_actions = CompiledHeaderActions(config.response_headers)

    def matches(self, request: RequestView) -> bool:
        """Whether ``request`` takes this route (the hot path)."""
        if self.host_exact is not None and request.host != self.host_exact:
            return False
        if self.host_suffix is not None and not request.host.endswith(self.host_suffix):
            return False
        path = request.path
        if self.path_exact is not None and path != self.path_exact:
            return False
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.simple:
            return True
        return self.mismatch(request) is None

    def mismatch(self, request: RequestView) -> str | None:
        """None when ``request`` matches; otherwise the first condition that fails, in words."""
        host = request.host
        if self.host_exact is not None and host != self.host_exact:
            return f"host {host!r} is not {self.host_exact!r}"
        if self.host_suffix is not None and not host.endswith(self.host_suffix):
            return f"host {host!r} is not under *{self.host_suffix}"
        if self.methods and request.method not in self.methods:
            return f"method {request.method} is not one of {', '.join(sorted(self.methods))}"
        path = request.path
        if self.path_exact is not None and path != self.path_exact:
            return f"path {path!r} is not {self.path_exact!r}"
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return f"path {path!r} does not start with {self.path_prefix!r}"
        prefix = self.separated_prefix
        if prefix is not None and not (
            prefix == "/" or path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?")
        ):
            return f"path {path!r} is not {prefix!r} or under {prefix + '/'!r}"
        if self.path_regex is not None and self.path_regex.search(path) is None:
            return f"path {path!r} does not match /{self.path_regex.pattern}/"
        for condition, pattern in self.headers:
            reason = _value_mismatch("header", condition, request.header_values(condition.name), pattern)
            if reason is not None:
                return reason
        for condition, pattern in self.query:
            reason = _value_mismatch("query parameter", condition, request.query_values(condition.name), pattern)
            if reason is not None:
                return reason
        return None

    def pools(self) -> list[Pool]:
        if self.pool is not None:
            return [self.pool]
        return [pool for pool, _ in self.split]

    def __repr__(self) -> str:
        target = self.pool.name if self.pool is not None else ("split" if self.split else "redirect")
        return f"<Route {self.name} -> {target}>"


class RouteTable:
    """An ordered list of compiled routes; the first that matches wins."""

    __slots__ = ("routes", "_by_host")

    # Memoised candidate lists (distinct Host values); cleared when full. A ClassVar, so that the
    # compiled build keeps it on the class rather than making it a per-instance slot.
    MAX_HOSTS: ClassVar[int] = 1024

    def __init__(self, routes: Sequence[RouteConfig], pools: Mapping[str, Pool]) -> None:
        self.routes = tuple(Route(r, i, pools) for i, r in enumerate(routes))
        self._by_host: dict[str, tuple[Route, ...]] = {}

    def match(self, request: RequestView) -> Route | None:
        """The first route, in config order, that ``request`` matches.

        Only routes whose host condition can hold are tried: those are memoised per Host value
        (as Envoy picks a virtual host before its routes), so a table of many per-host routes
        costs a dict lookup, not a scan of every route, per request."""
        host = request.host
        candidates = self._by_host.get(host)
        if candidates is None:
            candidates = self._candidates(host)
        for route in candidates:
            if route.matches(request):
                return route
        return None

    def route(
        self, method: bytes, host: str, path: str, query: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> tuple[Route | None, RequestView | None]:
        """``match`` for the data path: the route and the RequestView it was matched with, which
        is built only when a route needs more than host and path (None otherwise).

        The candidates for ``host`` already satisfy their host conditions, so a route with only
        host and path conditions (``simple``) costs two comparisons here, no call (issue 8)."""
        candidates = self._by_host.get(host)
        if candidates is None:
            candidates = self._candidates(host)
        view = None
        for route in candidates:
            exact = route.path_exact
            if exact is not None and path != exact:
                continue
            prefix = route.path_prefix
            if prefix is not None and not path.startswith(prefix):
                continue
            if route.simple:
                return route, view
            if view is None:
                view = RequestView(method.decode("latin-1"), host, path, query.decode("latin-1"), headers)
            if route.mismatch(view) is None:
                return route, view
        return None, view

    def _candidates(self, host: str) -> tuple[Route, ...]:
        candidates = tuple(
            route
            for route in self.routes
            if (route.host_exact is None or route.host_exact == host)
            and (route.host_suffix is None or host.endswith(route.host_suffix))
        )
        if len(self._by_host) >= self.MAX_HOSTS:
            self._by_host.clear()
        self._by_host[host] = candidates
        return candidates

    def explain(self, request: RequestView) -> list[tuple[Route, str | None]]:
        """Each route tried, in order, with why it didn't match (None for the one that did)."""
        tried: list[tuple[Route, str | None]] = []
        for route in self.routes:
            reason = route.mismatch(request)
            tried.append((route, reason))
            if reason is None:
                break
        return tried

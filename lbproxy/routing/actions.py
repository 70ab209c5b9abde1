"""What a matched route does to a request: split choice, rewrites, redirects, header edits. Pure."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lbproxy.config.model import HeaderActions, SplitCookieConfig

if TYPE_CHECKING:
    from lbproxy.pool.pool import Pool
    from lbproxy.routing.table import RequestView, Route

Headers = list[tuple[bytes, bytes]]


class CompiledHeaderActions:
    """``HeaderActions`` with names and values pre-encoded; ``apply`` edits a header list."""

    __slots__ = ("remove", "set_names", "set", "add", "empty")

    def __init__(self, actions: HeaderActions) -> None:
        self.set = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in actions.set]
        self.add = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in actions.add]
        self.set_names = frozenset(n.lower() for n, _ in self.set)
        self.remove = frozenset(n.encode("latin-1") for n in actions.remove) | self.set_names
        self.empty = not (self.set or self.add or actions.remove)

    def apply(self, headers: Headers) -> Headers:
        """``headers`` with removals, then sets (replacing), then additions applied."""
        if self.empty:
            return headers
        kept = [(n, v) for n, v in headers if n.lower() not in self.remove] if self.remove else list(headers)
        kept.extend(self.set)
        kept.extend(self.add)
        return kept


def choose_split(route: Route, cookie: str | None, rng: random.Random) -> tuple[Pool, bool]:
    """The pool a split route sends to, and whether to (re)issue the split cookie.

    A cookie naming a pool of this split with weight > 0 keeps the client there; otherwise a
    weighted random draw decides and the cookie is set (when the route has a split cookie).
    """
    if cookie:
        for pool, weight in route.split:
            if pool.name == cookie and weight > 0:
                return pool, False
    point = rng.random() * route.split_total
    for pool, weight in route.split:
        point -= weight
        if point < 0:
            return pool, route.config.split_cookie is not None
    return route.split[-1][0], route.config.split_cookie is not None


def split_cookie_header(config: SplitCookieConfig, pool_name: str) -> bytes:
    """The ``Set-Cookie`` value pinning a client to ``pool_name``."""
    parts = [f"{config.name}={pool_name}", f"Path={config.path}"]
    if config.max_age is not None:
        parts.append(f"Max-Age={config.max_age}")
    if config.http_only:
        parts.append("HttpOnly")
    if config.secure:
        parts.append("Secure")
    if config.same_site is not None:
        parts.append(f"SameSite={config.same_site}")
    return "; ".join(parts).encode("latin-1")


def rewrite_path(route: Route, path: str) -> str:
    """The path sent upstream after the route's ``rewrite`` (``path`` is normalised)."""
    rewrite = route.config.rewrite
    if rewrite is None:
        return path
    if rewrite.path_prefix is not None and route.matched_prefix is not None and path.startswith(route.matched_prefix):
        rest = path[len(route.matched_prefix) :]
        path = _join_prefix(rewrite.path_prefix, rest)
    if rewrite.strip_prefix is not None and path.startswith(rewrite.strip_prefix):
        rest = path[len(rewrite.strip_prefix) :]
        if not rest.startswith("/"):
            rest = "/" + rest
        path = rest
    return path


def _join_prefix(prefix: str, rest: str) -> str:
    if prefix.endswith("/") and rest.startswith("/"):
        return prefix + rest[1:]
    if not prefix.endswith("/") and rest and not rest.startswith("/"):
        return prefix + "/" + rest
    return prefix + rest or "/"


def redirect_location(route: Route, request: RequestView, host_header: str, scheme: str = "http") -> str:
    """The ``Location`` of a redirect route for ``request``."""
    redirect = route.config.redirect
    assert redirect is not None
    target_scheme = redirect.scheme or scheme
    host = redirect.host or _host_only(host_header)
    port = redirect.port
    if port is None and redirect.host is None and redirect.scheme is None:
        port_text = _port_of(host_header)
    else:
        port_text = str(port) if port is not None and port != (443 if target_scheme == "https" else 80) else ""
    path = request.path
    if redirect.path is not None:
        path = redirect.path
    elif redirect.path_prefix is not None and route.matched_prefix is not None and path.startswith(route.matched_prefix):
        path = _join_prefix(redirect.path_prefix, path[len(route.matched_prefix) :])
    authority = f"{host}:{port_text}" if port_text else host
    query = "" if redirect.strip_query or not request.query else "?" + request.query
    return f"{target_scheme}://{authority}{path}{query}"


def _host_only(host_header: str) -> str:
    if host_header.startswith("["):
        end = host_header.find("]")
        return host_header[: end + 1] if end > 0 else host_header
    return host_header.rsplit(":", 1)[0] if ":" in host_header else host_header


def _port_of(host_header: str) -> str:
    if host_header.startswith("["):
        end = host_header.find("]")
        rest = host_header[end + 1 :] if end > 0 else ""
        return rest[1:] if rest.startswith(":") else ""
    return host_header.rsplit(":", 1)[1] if ":" in host_header else ""


def pools_of(routes: Sequence[Route]) -> set[str]:
    return {pool.name for route in routes for pool in route.pools()}

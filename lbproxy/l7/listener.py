"""HttpListener: an ``http`` listener's shared state (router, limits, upstream pools, counters)."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING

from lbproxy.config.model import CookieConfig, HttpLimits, ListenerConfig, PoolConfig, UpstreamTlsConfig
from lbproxy.balancing.cookie_affinity import AffinityCookie
from lbproxy.ratelimit import TokenBuckets
from lbproxy.routing.table import RouteTable
from lbproxy.tls.contexts import upstream_context
from lbproxy.l7.session import LINGER_QUIET, HttpSession
from lbproxy.l7.upstream import BackendConnections
from lbproxy.net.listener import BaseListener, NetworkSet
from lbproxy.net.outbox import Outbox
from lbproxy.stats import RequestTally
from lbproxy.timers import TimerBatch, batch_delay

if TYPE_CHECKING:
    from lbproxy.accesslog import AccessLog
    from lbproxy.pool.backend import Backend
    from lbproxy.pool.pool import Pool


FORWARDED_PREFIXES_MAX = 4096  # memoised forwarding prefixes (distinct client addresses)


class UpstreamRegistry:
    """Idle-connection pools, one per backend, and the outbox every L7 write goes through
    (lbproxy.net.outbox: one for the daemon, so a transport's writes keep their order), shared
    by every http listener of the daemon."""

    __slots__ = ("pools", "outbox")

    def __init__(self, outbox: Outbox | None = None) -> None:
        self.pools: dict[Backend, BackendConnections] = {}
        self.outbox = outbox if outbox is not None else Outbox()

    def for_backend(self, backend: Backend, config: PoolConfig) -> BackendConnections:
        conns = self.pools.get(backend)
        if conns is None:
            conns = BackendConnections(
                backend, config.max_idle_connections, config.idle_connection_timeout, self.outbox
            )
            self.pools[backend] = conns
        return conns

    def forget(self, backend: Backend) -> None:
        """The backend left its pool: close its idle connections."""
        conns = self.pools.pop(backend, None)
        if conns is not None:
            conns.close_all()

    def close_all(self) -> None:
        for conns in self.pools.values():
            conns.close_all()


class HttpListener(BaseListener):
    """A ``mode: http`` listener."""

    def __init__(
        self,
        config: ListenerConfig,
        pools: Mapping[str, Pool],
        upstreams: UpstreamRegistry,
        access_log: AccessLog | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        self.loop = asyncio.get_running_loop()
        self.router = RouteTable(config.routes, pools)
        self.outbox = upstreams.outbox
        self.rng = random.Random()  # weighted splits
        self.rate_limiter = _rate_limiter(config)
        self.scheme = "https" if self.tls is not None else "http"
        self.scheme_bytes = self.scheme.encode()
        self._affinity: dict[str, tuple[CookieConfig, AffinityCookie]] = {}
        self._forwarded_prefixes: dict[str, bytes] = {}
        self._upstream_tls: dict[str, tuple[UpstreamTlsConfig, ssl.SSLContext]] = {}
        self.limits: HttpLimits = config.limits
        self.timers = TimerBatch(self.loop, _timer_delay(config.limits))
        self.upstreams = upstreams
        self.trusted_proxies = NetworkSet(config.trusted_proxies)
        self.has_trusted_proxies = bool(self.trusted_proxies)
        self.access_log = access_log
        self.tally = RequestTally()  # finished exchanges, counted by HttpSession
        self.refused: dict[int, int] = {}

    def protocol_factory(self) -> asyncio.Protocol:
        return HttpSession(self)

    def forwarded_prefix(self, client: str) -> bytes:
        """``X-Forwarded-For: <client>`` and ``X-Forwarded-Proto`` lines, then the name of
        ``X-Forwarded-Host``: what every request of an untrusted ``client`` starts its forwarding
        headers with. Memoised (bounded), so the connections of one client share one copy
        (issue 8: ~110 bytes less per idle connection, one join less per request)."""
        prefix = self._forwarded_prefixes.get(client)
        if prefix is None:
            if len(self._forwarded_prefixes) >= FORWARDED_PREFIXES_MAX:
                self._forwarded_prefixes.clear()
            prefix = self._forwarded_prefixes[client] = b"".join((
                b"X-Forwarded-For: ", client.encode("ascii"), b"\r\nX-Forwarded-Proto: ", self.scheme_bytes,
                b"\r\nX-Forwarded-Host: ",
            ))  # fmt: skip
        return prefix

    def is_trusted(self, host: str) -> bool:
        """Whether X-Forwarded-* from ``host`` are kept (``trusted_proxies``)."""
        return self.has_trusted_proxies and self.trusted_proxies.contains(host)

    def affinity_for(self, pool: Pool) -> AffinityCookie:
        """The affinity cookie codec of a ``cookie_affinity`` pool (rebuilt when its config changes)."""
        cached = self._affinity.get(pool.name)
        if cached is None or cached[0] is not pool.config.cookie:
            cached = (pool.config.cookie, AffinityCookie(pool.config.cookie, pool.name))
            self._affinity[pool.name] = cached
        return cached[1]

    def upstream_tls(self, pool: Pool) -> ssl.SSLContext | None:
        """The client TLS context for a pool with ``tls:``, or None for plain TCP."""
        config = pool.config.tls
        if config is None:
            return None
        cached = self._upstream_tls.get(pool.name)
        if cached is None or cached[0] is not config:
            cached = (config, upstream_context(config))
            self._upstream_tls[pool.name] = cached
        return cached[1]

    def update_routes(self, config: ListenerConfig, pools: Mapping[str, Pool]) -> None:
        """Swap in new routes (reload); exchanges already routed keep their pool.

        Certificate files are read again (renewed in place, e.g. by certbot, or newly named) for
        new handshakes; established connections keep their session."""
        self.router = RouteTable(config.routes, pools)
        if config.rate_limit != self.config.rate_limit:
            self.rate_limiter = _rate_limiter(config)
        if self.tls is not None and config.tls is not None:
            self.tls.reload(config.tls)
        self.limits = config.limits
        self.timers.delay = _timer_delay(config.limits)
        self.trusted_proxies = NetworkSet(config.trusted_proxies)
        self.has_trusted_proxies = bool(self.trusted_proxies)
        self.config = config

    def count_refused(self, status: int) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1


def _timer_delay(limits: HttpLimits) -> float:
    return batch_delay((limits.request_header_timeout, limits.keepalive_timeout, limits.client_timeout, LINGER_QUIET))


def _rate_limiter(config: ListenerConfig) -> TokenBuckets | None:
    rate = config.rate_limit
    return TokenBuckets(rate.requests_per_second, rate.burst) if rate is not None else None

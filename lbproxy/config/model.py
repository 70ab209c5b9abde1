"""The validated configuration: frozen dataclasses, built only by ``lbproxy.config.loader``.

Every value here has already been checked; code that consumes a ``Config`` never re-validates.
Durations are float seconds; in YAML they may be numbers (seconds) or strings such as ``250ms``,
``2s``, ``5m``, ``1h``. Defaults are the ones documented in README.md ("Configuration reference").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ListenerMode = Literal["http", "tcp", "dns"]
ProxyProtocolVersion = Literal["v1", "v2"]
HealthCheckType = Literal["tcp", "http"]
AccessLogFormat = Literal["combined", "json"]
SameSite = Literal["Strict", "Lax", "None"]
TlsVersion = Literal["1.2", "1.3"]

BUILTIN_STRATEGIES: tuple[str, ...] = (
    "round_robin",
    "least_connections",
    "ip_hash",
    "random",
    "cookie_affinity",
)


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port; ``host`` is an IP literal or a name, IPv6 without brackets."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class BackendConfig:
    address: Address
    weight: int = 1  # 1..1000; 0 is not allowed (use the admin API to drain)
    max_connections: int | None = None  # beyond it the strategy skips this backend
    proxy_protocol: ProxyProtocolVersion | None = None  # None: inherit the pool's


@dataclass(frozen=True, slots=True)
class DnsBackendConfig:
    """``- dns: NAME:PORT``: every A/AAAA record of ``name`` is a backend on ``port``.

    Re-resolved every ``PoolConfig.resolve_interval``; ``weight``, ``max_connections`` and
    ``proxy_protocol`` apply to each address found.
    """

    name: str  # a DNS name, lower-case, never an IP literal
    port: int
    weight: int = 1
    max_connections: int | None = None
    proxy_protocol: ProxyProtocolVersion | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    type: HealthCheckType = "tcp"
    interval: float = 2.0
    timeout: float = 1.0
    healthy_threshold: int = 2  # haproxy "rise"
    unhealthy_threshold: int = 3  # haproxy "fall"
    # http checks only:
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    expect_status: tuple[tuple[int, int], ...] = ((200, 399),)  # inclusive ranges
    expect_body: str | None = None


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Passive ejection (Envoy's outlier detection): failures seen on real traffic eject a backend."""

    consecutive_failures: int = 5  # connect failures/resets/timeouts in a row (L4 and L7); 0: off
    consecutive_5xx: int = 0  # L7 5xx responses in a row; 0: off
    base_ejection_time: float = 30.0  # ejected for base × times ejected ...
    max_ejection_time: float = 300.0  # ... capped here
    max_ejection_percent: int = 10  # of a pool at once; at least one backend may always be ejected


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """The affinity cookie that ``cookie_affinity`` inserts (haproxy ``cookie insert indirect nocache``)."""

    name: str = "lbproxy_affinity"
    path: str = "/"
    max_age: int | None = None  # seconds; None: a session cookie
    http_only: bool = True
    secure: bool = False
    same_site: SameSite | None = "Lax"
    secret: str = ""  # HMAC key; instances sharing it honour each other's cookies
    fallback: str = "round_robin"  # picks (and re-dispatches) requests without a usable cookie


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    backends: tuple[BackendConfig, ...]
    strategy: str = "round_robin"  # a BUILTIN_STRATEGIES name or "package.module:ClassName"
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierConfig | None = field(default_factory=OutlierConfig)  # None: off
    slow_start: float = 0.0  # seconds over which a returning backend's weight ramps up; 0: off
    connect_timeout: float = 5.0
    response_timeout: float = 60.0  # L7: from request sent to response head received
    max_response_body_bytes: int | None = None  # L7: a longer (or endless) body is cut; None: no limit
    retries: int = 2  # further backends tried after a connect failure or an unanswered reset (L7, idempotent)
    max_idle_connections: int = 512  # L7 upstream keep-alive connections kept per backend
    idle_connection_timeout: float = 60.0  # an idle upstream connection older than this is closed
    proxy_protocol: ProxyProtocolVersion | None = None
    cookie: CookieConfig = field(default_factory=CookieConfig)
    hash_on: HashOn | None = None  # ip_hash: hash this instead of the client address when present
    tls: UpstreamTlsConfig | None = None  # speak TLS to the backends
    dns_backends: tuple[DnsBackendConfig, ...] = ()  # backends found in DNS (``- dns: NAME:PORT``)
    resolve_interval: float = 30.0  # seconds between lookups of dns_backends
    resolvers: tuple[Address, ...] = ()  # DNS servers to ask; empty: the system's (resolv.conf)


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query-parameter condition: exactly one of exact, regex, present is set."""

    name: str  # header names lowercased; query parameter names as written
    exact: str | None = None
    regex: str | None = None
    present: bool | None = None  # True: must be present; False: must be absent


@dataclass(frozen=True, slots=True)
class MatchConfig:
    """All given conditions must hold; an empty match takes everything."""

    host: str | None = None  # exact, case-insensitive, port ignored; "*.example.com" wildcard
    path_prefix: str | None = None  # plain string prefix of the normalised path
    path_separated_prefix: str | None = None  # segment-aware: /api matches /api and /api/x, not /apix
    path: str | None = None  # exact
    path_regex: str | None = None  # re.search on the normalised path (anchor it with ^ and $)
    methods: tuple[str, ...] = ()  # upper-case; empty: any
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class SplitTarget:
    pool: str
    weight: int


@dataclass(frozen=True, slots=True)
class SplitCookieConfig:
    """A cookie that keeps a client in the split variant it first got."""

    name: str = "lbproxy_split"
    path: str = "/"
    max_age: int | None = None
    http_only: bool = True
    secure: bool = False
    same_site: SameSite | None = "Lax"


@dataclass(frozen=True, slots=True)
class RewriteConfig:
    path_prefix: str | None = None  # replaces the prefix the route matched (path_prefix or path_separated_prefix)
    strip_prefix: str | None = None  # removed from the start of the path when present
    host: str | None = None  # the Host header sent upstream


@dataclass(frozen=True, slots=True)
class RedirectConfig:
    status: int = 302  # 301 | 302 | 303 | 307 | 308
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None  # replaces the whole path
    path_prefix: str | None = None  # replaces the prefix the route matched
    strip_query: bool = False


@dataclass(frozen=True, slots=True)
class HeaderActions:
    set: tuple[tuple[str, str], ...] = ()  # replace (or add) the header
    add: tuple[tuple[str, str], ...] = ()  # append another field
    remove: tuple[str, ...] = ()  # lowercased names


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """A match and one action: ``pool``, ``split`` or ``redirect``."""

    pool: str | None = None
    match: MatchConfig = field(default_factory=MatchConfig)
    name: str | None = None  # for metrics and logs; defaults to "route<index>"
    split: tuple[SplitTarget, ...] = ()
    split_cookie: SplitCookieConfig | None = None
    rewrite: RewriteConfig | None = None
    redirect: RedirectConfig | None = None
    request_headers: HeaderActions = field(default_factory=HeaderActions)
    response_headers: HeaderActions = field(default_factory=HeaderActions)
    timeout: float | None = None  # overrides the pool's response_timeout
    retries: int | None = None  # overrides the pool's retries

    def pools(self) -> tuple[str, ...]:
        """Every pool this route can send to."""
        if self.pool is not None:
            return (self.pool,)
        return tuple(t.pool for t in self.split)


@dataclass(frozen=True, slots=True)
class HashOn:
    """What hashing strategies hash for affinity: a cookie or a header, else the client address."""

    cookie: str | None = None
    header: str | None = None  # lowercased


@dataclass(frozen=True, slots=True)
class HttpLimits:
    max_header_bytes: int = 65536  # request line + headers; beyond it: 431
    max_header_count: int = 100  # beyond it: 431
    max_body_bytes: int | None = None  # None: unlimited (bodies are streamed); beyond it: 413
    request_header_timeout: float = 10.0  # first byte to end of headers; beyond it: 408
    keepalive_timeout: float = 75.0  # idle client keep-alive connection
    client_timeout: float = 60.0  # client silent while we wait for more of its body
    # Slow-body guard (mod_reqtimeout's MinRate): the body deadline starts at client_timeout after
    # the headers and each received chunk extends it by len/min_body_rate seconds (never beyond
    # client_timeout from now), so a client trickling a byte at a time is closed with 408.
    min_body_rate: int = 1024  # bytes per second; 0: off


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Per-client request rate (token bucket); beyond it: 429 with Retry-After."""

    requests_per_second: float
    burst: int = 20


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    cert: str  # PEM file: the certificate (chain)
    key: str  # PEM file: its private key


@dataclass(frozen=True, slots=True)
class TlsServerConfig:
    """TLS termination on an http listener: the first certificate is the default."""

    certificates: tuple[TlsCertificate, ...]
    min_version: TlsVersion = "1.2"
    alpn: tuple[str, ...] = ("http/1.1",)


@dataclass(frozen=True, slots=True)
class UpstreamTlsConfig:
    """TLS from lbproxy to a pool's backends (and its health checks)."""

    verify: bool = True
    ca_file: str | None = None  # None: the system's trust store
    server_name: str | None = None  # SNI and the name verified; None: the backend's host


@dataclass(frozen=True, slots=True)
class SniRoute:
    server_name: str  # exact or "*.example.com", lower-case
    pool: str


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """A ``mode: dns`` listener: answers A/AAAA for names under ``zone`` with healthy backends."""

    zone: str  # lower-case, no trailing dot
    records: tuple[tuple[str, str], ...]  # (fully qualified lower-case name, pool)
    ttl: int = 5  # seconds; short, so clients come back for the current healthy set
    max_answers: int = 8  # addresses per answer


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    name: str
    bind: Address
    mode: ListenerMode
    pool: str | None = None  # tcp listeners: required
    routes: tuple[RouteConfig, ...] = ()  # http listeners: required, non-empty
    max_connections: int = 10000  # beyond it the listener stops accepting until one closes
    idle_timeout: float = 300.0  # tcp listeners: no bytes either way for this long closes both sides
    backlog: int = 1024
    # Listening sockets on the address (SO_REUSEPORT) when the daemon binds it itself: libuv
    # accepts one connection per socket per event-loop pass, so more sockets let a busy pass
    # take several new connections (issue 8). 1 = one plain socket.
    accept_sockets: int = 4
    accept_proxy_protocol: bool = False
    proxy_protocol_from: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # trusted senders (CIDR)
    trusted_proxies: tuple[str, ...] = ()  # http: X-Forwarded-* kept only from these (CIDR)
    limits: HttpLimits = field(default_factory=HttpLimits)
    dns: DnsConfig | None = None  # dns listeners: required
    tls: TlsServerConfig | None = None  # http listeners: terminate TLS
    redirect_https: bool = False  # http listeners without tls: answer 308 to https://
    sni_routes: tuple[SniRoute, ...] = ()  # tcp listeners: pick the pool by the ClientHello's SNI
    client_hello_timeout: float = 5.0  # tcp listeners with sni_routes
    splice: bool = False  # tcp listeners: relay with splice(2) once connected (Linux; zero-copy)
    max_connections_per_client: int | None = None  # per client address (PROXY/trusted-proxy aware)
    rate_limit: RateLimitConfig | None = None  # http listeners: per client address


@dataclass(frozen=True, slots=True)
class AdminConfig:
    bind: Address
    token: str | None = None  # bearer token required for mutating endpoints when set


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    format: AccessLogFormat = "combined"
    path: str = "-"  # "-" is stderr


@dataclass(frozen=True, slots=True)
class Config:
    pools: dict[str, PoolConfig]
    listeners: tuple[ListenerConfig, ...]
    admin: AdminConfig | None = None
    access_log: AccessLogConfig | None = None  # None: off
    drain_timeout: float = 30.0  # graceful shutdown: how long in-flight work may take
    shutdown_delay: float = 0.0  # keep accepting this long after SIGTERM (readyz already failing)
    workers: int | Literal["auto"] = 1  # processes sharing the listeners; "auto": one per core
    source: str = "<config>"  # the file it was loaded from, for messages

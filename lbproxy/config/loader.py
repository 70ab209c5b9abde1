"""Load and validate a YAML configuration into the frozen dataclasses of ``lbproxy.config.model``.

The YAML text is composed into nodes (``yaml.compose``) and converted here, so that the line of
every key is known. Validation never stops at the first problem: every problem found is collected
as ``FILE:LINE: key.path: message`` (LINE 1-based) and raised together in one ``ConfigError``,
sorted by line. Nothing but ``load_config`` touches the file system.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from lbproxy.config.model import (
    BUILTIN_STRATEGIES,
    AccessLogConfig,
    AccessLogFormat,
    Address,
    AdminConfig,
    BackendConfig,
    Config,
    CookieConfig,
    DnsBackendConfig,
    DnsConfig,
    RateLimitConfig,
    SniRoute,
    TlsCertificate,
    TlsServerConfig,
    UpstreamTlsConfig,
    HashOn,
    HeaderActions,
    HealthCheckConfig,
    HealthCheckType,
    ListenerMode,
    OutlierConfig,
    ProxyProtocolVersion,
    RedirectConfig,
    RewriteConfig,
    SplitCookieConfig,
    SplitTarget,
    ValueMatch,
    HttpLimits,
    ListenerConfig,
    MatchConfig,
    PoolConfig,
    RouteConfig,
    SameSite,
    TlsVersion,
)
from lbproxy.config.values import (
    describe,
    is_dns_name,
    parse_address,
    parse_cidr,
    parse_duration,
    parse_status_ranges,
)
from lbproxy.errors import ConfigError

T = TypeVar("T")
Converter = Callable[[Any], T]

_TOP_KEYS = ("admin", "pools", "listeners", "access_log", "drain_timeout", "shutdown_delay", "workers")
_ADMIN_KEYS = ("bind", "token")
_ACCESS_LOG_KEYS = ("format", "path")
_POOL_KEYS = (
    "strategy",
    "backends",
    "health_check",
    "outlier_detection",
    "slow_start",
    "connect_timeout",
    "response_timeout",
    "max_response_body_bytes",
    "retries",
    "max_idle_connections",
    "idle_connection_timeout",
    "proxy_protocol",
    "cookie",
    "hash_on",
    "tls",
    "resolve_interval",
    "resolvers",
)
_BACKEND_KEYS = ("address", "dns", "weight", "max_connections", "proxy_protocol")
_HEALTH_KEYS = (
    "type",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "method",
    "path",
    "host",
    "expect_status",
    "expect_body",
)
_OUTLIER_KEYS = (
    "consecutive_failures",
    "consecutive_5xx",
    "base_ejection_time",
    "max_ejection_time",
    "max_ejection_percent",
)
_COOKIE_KEYS = ("name", "path", "max_age", "http_only", "secure", "same_site", "secret", "fallback")
_LISTENER_KEYS = (
    "name",
    "bind",
    "mode",
    "pool",
    "routes",
    "max_connections",
    "idle_timeout",
    "backlog",
    "accept_sockets",
    "accept_proxy_protocol",
    "proxy_protocol_from",
    "trusted_proxies",
    "limits",
    "zone",
    "ttl",
    "max_answers",
    "records",
    "tls",
    "redirect_https",
    "sni_routes",
    "client_hello_timeout",
    "splice",
    "max_connections_per_client",
    "rate_limit",
)
_RATE_LIMIT_KEYS = ("requests_per_second", "burst")
_TLS_SERVER_KEYS = ("certificates", "min_version", "alpn")
_TLS_CERT_KEYS = ("cert", "key")
_TLS_UPSTREAM_KEYS = ("verify", "ca_file", "server_name")
_SNI_ROUTE_KEYS = ("server_name", "pool")
_ROUTE_KEYS = (
    "name",
    "match",
    "pool",
    "split",
    "split_cookie",
    "rewrite",
    "redirect",
    "headers",
    "timeout",
    "retries",
)
_MATCH_KEYS = (
    "host",
    "path_prefix",
    "path_separated_prefix",
    "path",
    "path_regex",
    "method",
    "headers",
    "query",
)
_SPLIT_KEYS = ("pool", "weight")
_SPLIT_COOKIE_KEYS = ("name", "path", "max_age", "http_only", "secure", "same_site")
_REWRITE_KEYS = ("path_prefix", "strip_prefix", "host")
_REDIRECT_KEYS = ("status", "scheme", "host", "port", "path", "path_prefix", "strip_query")
_ROUTE_HEADERS_KEYS = ("request", "response")
_HEADER_ACTION_KEYS = ("set", "add", "remove")
_VALUE_MATCH_KEYS = ("exact", "regex", "present")
_HASH_ON_KEYS = ("cookie", "header")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LIMITS_KEYS = (
    "max_header_bytes",
    "max_header_count",
    "max_body_bytes",
    "request_header_timeout",
    "keepalive_timeout",
    "client_timeout",
    "min_body_rate",
)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_COOKIE_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_METHOD_RE = re.compile(r"[A-Za-z]{1,20}")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BARE_IPV6_RE = re.compile(r"\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.%]*\]")


class _Invalid:
    """Stands for a YAML value that could not be constructed (its problem is already reported)."""

    def __repr__(self) -> str:
        return "<invalid>"


_INVALID: Any = _Invalid()

# Defaults live in model.py only; these instances are where the loader reads them.
_CONFIG_DEFAULTS = Config(pools={}, listeners=())
_POOL_DEFAULTS = PoolConfig(name="", backends=())
_BACKEND_DEFAULTS = BackendConfig(address=Address("0.0.0.0", 1))
_HEALTH_DEFAULTS = HealthCheckConfig()
_OUTLIER_DEFAULTS = OutlierConfig()
_COOKIE_DEFAULTS = CookieConfig()
_LISTENER_DEFAULTS = ListenerConfig(name="", bind=Address("0.0.0.0", 0), mode="http")
_LIMITS_DEFAULTS = HttpLimits()
_ACCESS_LOG_DEFAULTS = AccessLogConfig()
_ADMIN_DEFAULT_BIND = Address("127.0.0.1", 9901)


# --------------------------------------------------------------------------------------------
# Public API


def load_config(path: str) -> Config:
    """Read and validate the YAML file at ``path``.

    Raises ``ConfigError`` listing every problem; ``["PATH: cannot read: REASON"]`` when the file
    cannot be read or is not UTF-8.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: cannot read: not valid UTF-8 ({exc.reason})"]) from exc
    return load_config_text(text, source=path)


def load_config_text(text: str, source: str = "<config>") -> Config:
    """Validate the YAML document ``text``; ``source`` names it in messages and ``Config.source``.

    Raises ``ConfigError`` whose ``problems`` are every ``FILE:LINE: key.path: message`` found.
    """
    problems = _Problems(source)
    root = _parse_yaml(text, problems)
    config: Config | None = None
    if root is not None:
        config = _build_config(root, problems)
    if problems.items or config is None:
        raise ConfigError(problems.sorted())
    return config


# --------------------------------------------------------------------------------------------
# Problems


class _Problems:
    """Collects ``FILE:LINE: key.path: message`` lines for one source."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, path: str, message: str) -> None:
        """Record a problem at 1-based ``line``; ``path`` may be empty for document-level ones."""
        prefix = f"{self.source}:{line}: {path}: " if path else f"{self.source}:{line}: "
        self.items.append((line, prefix + message))

    def sorted(self) -> list[str]:
        """Every problem, ordered by line (stable for problems on the same line)."""
        return [text for _, text in sorted(self.items, key=lambda item: item[0])]


def _suggest(word: str, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --------------------------------------------------------------------------------------------
# YAML nodes -> Python values that remember their lines


class _Map(dict[str, Any]):
    """A YAML mapping with the 1-based line of the mapping and of each of its keys."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}


class _Seq(list[Any]):
    """A YAML sequence with the 1-based line of the sequence and of each item."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.item_lines: list[int] = []


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _parse_yaml(text: str, problems: _Problems) -> _Map | None:
    """The document's root mapping, or ``None`` after recording why there is none."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = str(exc.problem or exc.context or "invalid YAML")
        problems.add(line, "yaml", message + _yaml_hint(text, line))
        return None
    except yaml.YAMLError as exc:
        problems.add(1, "yaml", str(exc))
        return None
    if node is None:
        problems.add(1, "", "empty configuration")
        return None
    root = _NodeConverter(problems).convert(node, "")
    if root is _INVALID:
        return None
    if root is None and isinstance(node, ScalarNode) and node.value.strip() == "":
        problems.add(1, "", "empty configuration")
        return None
    if not isinstance(root, _Map):
        problems.add(_line(node), "", f"expected a mapping at the top level, got {describe(root)}")
        return None
    if not root:
        problems.add(root.line, "", "empty configuration")
        return None
    return root


def _yaml_hint(text: str, line: int) -> str:
    """A hint for the usual YAML mistake on ``line``: an unquoted ``[ipv6]:port``."""
    lines = text.splitlines()
    if 1 <= line <= len(lines) and _BARE_IPV6_RE.search(lines[line - 1]):
        return ' (quote IPv6 addresses: "[::1]:8080")'
    return ""


class _NodeConverter:
    """Turns composed YAML nodes into ``_Map``/``_Seq``/scalars, reporting duplicate keys."""

    def __init__(self, problems: _Problems) -> None:
        self._problems = problems
        self._constructor = SafeConstructor()
        self._active: set[int] = set()

    def convert(self, node: Node, path: str) -> Any:
        """The Python value of ``node``; ``path`` is its key path, for messages."""
        if id(node) in self._active:
            self._problems.add(_line(node), path or "yaml", "recursive alias")
            return _INVALID
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: Node, path: str) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            self._problems.add(_line(node), path or "yaml", str(exc.problem))
            return _INVALID

    def _sequence(self, node: SequenceNode, path: str) -> _Seq:
        seq = _Seq(_line(node))
        for index, item in enumerate(node.value):
            seq.append(self.convert(item, f"{path}[{index}]"))
            seq.item_lines.append(_line(item))
        return seq

    def _mapping(self, node: MappingNode, path: str) -> _Map:
        mapping = _Map(_line(node))
        self._report_duplicates(node, path)
        try:
            self._constructor.flatten_mapping(node)
        except ConstructorError as exc:
            self._problems.add(_line(node), path or "yaml", str(exc.problem))
            return mapping
        for key_node, value_node in node.value:
            key = self._scalar(key_node, path) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                shown = describe(key) if isinstance(key_node, ScalarNode) else "a collection"
                message = f"keys must be strings, got {shown}"
                self._problems.add(_line(key_node), path or "yaml", message)
                continue
            mapping[key] = self.convert(value_node, _join(path, key))
            mapping.key_lines[key] = _line(key_node)
        return mapping

    def _report_duplicates(self, node: MappingNode, path: str) -> None:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = str(key_node.value)
            if key in seen:
                self._problems.add(
                    _line(key_node),
                    _join(path, key),
                    f"duplicate key '{key}' (first at line {seen[key]})",
                )
            else:
                seen[key] = _line(key_node)


# --------------------------------------------------------------------------------------------
# Converters: value -> validated value, raising ValueError(message)


def _int(low: int | None = None, high: int | None = None) -> Converter[int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {describe(value)}")
        if low is not None and high is not None and not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        if low is not None and value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise ValueError(f"must be at most {high}, got {value}")
        return value

    return convert


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe(value)}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")
    if not value:
        raise ValueError("must not be empty")
    return value


def _name(value: Any) -> str:
    text = _str(value)
    if not _NAME_RE.fullmatch(text):
        raise ValueError(
            f"invalid name {text!r}: use letters, digits, '_', '-' and '.' (at most 64, "
            "starting with a letter or digit)"
        )
    return text


def _url_path(value: Any) -> str:
    text = _str(value)
    if not text.startswith("/"):
        raise ValueError(f"must start with '/', got {text!r}")
    if any(ch.isspace() or ord(ch) < 0x20 or ch == ";" for ch in text):
        raise ValueError(f"must not contain spaces, control characters or ';': {text!r}")
    return text


def _duration(*, positive: bool) -> Converter[float]:
    def convert(value: Any) -> float:
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError(f"must be greater than 0, got {describe(value)}")
        return seconds

    return convert


S = TypeVar("S", bound=str)

# The accepted spellings of each enumerated key, taken from the model's Literal types.
_PROXY_PROTOCOL_VERSIONS: tuple[ProxyProtocolVersion, ...] = get_args(ProxyProtocolVersion)
_HEALTH_CHECK_TYPES: tuple[HealthCheckType, ...] = get_args(HealthCheckType)
_SAME_SITES: tuple[SameSite, ...] = get_args(SameSite)
_ACCESS_LOG_FORMATS: tuple[AccessLogFormat, ...] = get_args(AccessLogFormat)
_LISTENER_MODES: tuple[ListenerMode, ...] = get_args(ListenerMode)
_TLS_VERSIONS: tuple[TlsVersion, ...] = get_args(TlsVersion)


def _choice(options: Sequence[S], *, ignore_case: bool = False) -> Converter[S]:
    """A converter accepting exactly one of ``options`` (a Literal alias's ``get_args()``)."""

    def convert(value: Any) -> S:
        if isinstance(value, str):
            for option in options:
                if value == option or (ignore_case and value.lower() == option.lower()):
                    return option
        shown = ", ".join(options)
        hint = _suggest(value, options) if isinstance(value, str) else ""
        raise ValueError(f"expected one of {shown}, got {describe(value)}{hint}")

    return convert


def _address(*, allow_port_zero: bool) -> Converter[Address]:
    def convert(value: Any) -> Address:
        if isinstance(value, list):
            raise ValueError(
                "expected an address string like 'host:port', got list "
                "(quote IPv6 addresses: \"[::1]:8080\")"
            )
        return parse_address(value, allow_port_zero=allow_port_zero)

    return convert


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe(value)}")
    return value


def _cidrs(value: Any) -> tuple[str, ...]:
    """A list of CIDR networks; a single string is a list of one."""
    if isinstance(value, str):
        return (parse_cidr(value),)
    if isinstance(value, list):
        return tuple(parse_cidr(item) for item in value)
    raise ValueError(f"expected a list of CIDR networks, got {describe(value)}")


def _strategy(value: Any) -> str:
    name = _str(value)
    if name in BUILTIN_STRATEGIES:
        return name
    from lbproxy.balancing.registry import resolve_strategy_class

    resolve_strategy_class(name)
    return name


def _match_host(value: Any) -> str:
    host = _str(value).lower()
    bare = host[2:] if host.startswith("*.") else host
    if not is_dns_name(bare):
        raise ValueError(
            f"invalid host {value!r}: expected a host name such as 'example.com' or "
            "'*.example.com' (without port)"
        )
    return host


def _token(value: Any) -> str:
    text = _str(value)
    if any(ch.isspace() for ch in text):
        raise ValueError("must not contain whitespace")
    return text


MAX_WORKERS = 1024


def parse_workers(value: Any) -> int | Literal["auto"]:
    """``workers``: a whole number 1-1024, or ``auto`` (one per core, decided when run)."""
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"must be between 1 and {MAX_WORKERS} or 'auto', got {value}")
    raise ValueError(f"expected a number of processes or 'auto', got {describe(value)}")


def _dns_target(value: Any) -> Address:
    """``NAME:PORT`` for a dns backend: the host must be a DNS name, not an IP literal."""
    address = _address(allow_port_zero=False)(value)
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        return Address(address.host.rstrip("."), address.port)
    raise ValueError(f"{value!r} is an IP address: use 'address' for it ('dns' takes a name to look up)")


def _resolvers(value: Any) -> tuple[Address, ...]:
    """DNS servers: ``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` (port 53 when left out); one or a list."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected at least one resolver address, e.g. ['127.0.0.1:53']")
    out: list[Address] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected a resolver address such as '10.0.0.2' or '10.0.0.2:53', got {describe(item)}")
        try:
            out.append(Address(str(ipaddress.ip_address(item)), 53))  # a bare IP (v4 or v6)
            continue
        except ValueError:
            pass
        try:
            address = parse_address(item, allow_port_zero=False)
            ipaddress.ip_address(address.host)
        except ValueError:
            raise ValueError(
                f"invalid resolver {item!r}: expected an IP address with an optional port, "
                "e.g. '10.0.0.2' or '127.0.0.1:5353'"
            ) from None
        out.append(address)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Sections


class _Section:
    """A YAML mapping being read at ``path``: reports unknown keys, then hands out typed values.

    Getters record a problem and return the default (``get``) or ``None`` (``require``) when a
    value is invalid, so a caller keeps going and every problem is found.
    """

    def __init__(self, problems: _Problems, node: _Map, path: str, keys: Sequence[str]) -> None:
        self.problems = problems
        self.node = node
        self.path = path
        for key in node:
            if key not in keys:
                self.error(key, f"unknown key '{key}'{_suggest(key, keys)}")

    def sub(self, key: str) -> str:
        """The key path of ``key`` in this mapping."""
        return _join(self.path, key)

    def line(self, key: str) -> int:
        """The line of ``key``, or of this mapping when the key is absent."""
        return self.node.key_lines.get(key, self.node.line)

    def has(self, key: str) -> bool:
        """True when ``key`` is present with a non-null, constructible value."""
        value = self.node.get(key)
        return value is not None and value is not _INVALID

    def error(self, key: str, message: str) -> None:
        """Record a problem about ``key`` at its line."""
        self.problems.add(self.line(key), self.sub(key), message)

    def missing(self, key: str, why: str = "") -> None:
        """Record that required ``key`` is absent (at this mapping's line)."""
        self.problems.add(self.node.line, self.sub(key), f"missing required key '{key}'{why}")

    def get(self, key: str, convert: Converter[T], default: T) -> T:
        """The converted value of ``key``; ``default`` when absent, null or invalid."""
        if not self.has(key):
            return default
        try:
            return convert(self.node[key])
        except ValueError as exc:
            self.error(key, str(exc))
            return default

    def require(self, key: str, convert: Converter[T], why: str = "") -> T | None:
        """The converted value of ``key``; ``None`` (problem recorded) when absent or invalid."""
        if key not in self.node:
            self.missing(key, why)
            return None
        if self.node[key] is _INVALID:
            return None
        try:
            return convert(self.node[key])
        except ValueError as exc:
            self.error(key, str(exc))
            return None

    def section(self, key: str, keys: Sequence[str]) -> _Section | None:
        """The mapping under ``key`` as a ``_Section``; ``None`` if absent, null or no mapping."""
        if not self.has(key):
            return None
        return _as_section(self.problems, self.node[key], self.sub(key), self.line(key), keys)

    def items(self, key: str) -> list[tuple[int, str, Any]] | None:
        """``(line, path, value)`` of each item of the list under ``key``; ``None`` if no list."""
        value = self.node.get(key)
        if value is _INVALID:
            return None
        if not isinstance(value, _Seq):
            self.error(key, f"expected a list, got {describe(value)}")
            return None
        path = self.sub(key)
        return [(value.item_lines[i], f"{path}[{i}]", item) for i, item in enumerate(value)]


def _as_section(
    problems: _Problems, value: Any, path: str, line: int, keys: Sequence[str]
) -> _Section | None:
    """``value`` as a ``_Section``, or ``None`` after reporting that it is not a mapping."""
    if value is _INVALID:
        return None
    if not isinstance(value, _Map):
        problems.add(line, path, f"expected a mapping, got {describe(value)}")
        return None
    return _Section(problems, value, path, keys)


def _switchable(sec: _Section, key: str) -> bool | None:
    """For a ``key: true | false | {mapping}`` section: the bool, or ``None`` for a mapping.

    Absent and null count as ``False``; anything else is reported and counts as ``False``.
    """
    value = sec.node.get(key)
    if value is None or value is _INVALID:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, _Map):
        return None
    sec.error(key, f"expected true, false or a mapping, got {describe(value)}")
    return False


# --------------------------------------------------------------------------------------------
# Building the config


@dataclass
class _Bind:
    address: Address
    line: int
    path: str
    label: str


@dataclass
class _Context:
    """What cross-section checks need: problems, pool names and strategies, binds seen."""

    problems: _Problems
    pool_names: list[str] = field(default_factory=list)
    pool_strategies: dict[str, str] = field(default_factory=dict)
    binds: list[_Bind] = field(default_factory=list)


def _build_config(root: _Map, problems: _Problems) -> Config | None:
    top = _Section(problems, root, "", _TOP_KEYS)
    ctx = _Context(problems)
    pools = _build_pools(top, ctx)
    admin = _build_admin(top, ctx)
    listeners = _build_listeners(top, ctx)
    access_log = _build_access_log(top)
    default = _CONFIG_DEFAULTS
    drain_timeout = top.get("drain_timeout", _duration(positive=False), default.drain_timeout)
    shutdown_delay = top.get("shutdown_delay", _duration(positive=False), default.shutdown_delay)
    workers = top.get("workers", parse_workers, default.workers)
    _check_bind_clashes(ctx)
    if pools is None or listeners is None or problems.items:
        return None
    return Config(
        pools=pools,
        listeners=listeners,
        admin=admin,
        access_log=access_log,
        drain_timeout=drain_timeout,
        shutdown_delay=shutdown_delay,
        workers=workers,
        source=problems.source,
    )


# ---- pools


def _build_pools(top: _Section, ctx: _Context) -> dict[str, PoolConfig] | None:
    if "pools" not in top.node:
        top.missing("pools")
        return None
    node = top.node["pools"]
    if node is _INVALID:
        return None
    if not isinstance(node, _Map):
        top.error("pools", f"expected a mapping of pool names to pools, got {describe(node)}")
        return None
    if not node:
        top.error("pools", "at least one pool is required")
        return None
    ctx.pool_names = list(node)
    pools: dict[str, PoolConfig] = {}
    for name, value in node.items():
        path, line = f"pools.{name}", node.key_lines[name]
        try:
            _name(name)
        except ValueError as exc:
            ctx.problems.add(line, path, str(exc))
        pool = _build_pool(ctx, name, value, path, line)
        if pool is not None:
            pools[name] = pool
    return pools


def _build_pool(ctx: _Context, name: str, value: Any, path: str, line: int) -> PoolConfig | None:
    sec = _as_section(ctx.problems, value, path, line, _POOL_KEYS)
    if sec is None:
        return None
    default = _POOL_DEFAULTS
    strategy = sec.get("strategy", _strategy, default.strategy)
    if isinstance(sec.node.get("strategy"), str):
        ctx.pool_strategies[name] = sec.node["strategy"]
    built = _build_backends(sec)
    backends, dns_backends = built if built is not None else ((), ())
    positive = _duration(positive=True)
    pool = PoolConfig(
        name=name,
        backends=backends,
        dns_backends=dns_backends,
        resolve_interval=sec.get("resolve_interval", positive, default.resolve_interval),
        resolvers=sec.get("resolvers", _resolvers, default.resolvers),
        strategy=strategy,
        health_check=_build_health_check(sec),
        outlier_detection=_build_outlier(sec),
        slow_start=sec.get("slow_start", _duration(positive=False), default.slow_start),
        connect_timeout=sec.get("connect_timeout", positive, default.connect_timeout),
        response_timeout=sec.get("response_timeout", positive, default.response_timeout),
        max_response_body_bytes=sec.get("max_response_body_bytes", _int(0), default.max_response_body_bytes),
        retries=sec.get("retries", _int(0, 100), default.retries),
        max_idle_connections=sec.get(
            "max_idle_connections", _int(0), default.max_idle_connections
        ),
        idle_connection_timeout=sec.get(
            "idle_connection_timeout", positive, default.idle_connection_timeout
        ),
        proxy_protocol=sec.get(
            "proxy_protocol", _choice(_PROXY_PROTOCOL_VERSIONS), default.proxy_protocol
        ),
        cookie=_build_cookie(sec),
        hash_on=_build_hash_on(sec),
        tls=_build_upstream_tls(sec),
    )
    return pool if built is not None else None


def _build_backends(
    pool: _Section,
) -> tuple[tuple[BackendConfig, ...], tuple[DnsBackendConfig, ...]] | None:
    """``(static backends, dns backends)``; ``None`` (problems recorded) if any item is invalid."""
    if "backends" not in pool.node:
        pool.missing("backends")
        return None
    items = pool.items("backends")
    if items is None:
        return None
    if not items:
        pool.error("backends", "a pool needs at least one backend")
        return None
    backends: list[BackendConfig] = []
    dns_backends: list[DnsBackendConfig] = []
    seen: dict[object, int] = {}
    for line, path, value in items:
        backend = _build_backend(pool.problems, value, path, line)
        if backend is None:
            continue
        key = backend.address if isinstance(backend, BackendConfig) else (backend.name, backend.port)
        if key in seen:
            shown = backend.address if isinstance(backend, BackendConfig) else f"dns {backend}"
            message = f"duplicate backend {shown} (first at line {seen[key]})"
            pool.problems.add(line, path, message)
        seen.setdefault(key, line)
        if isinstance(backend, BackendConfig):
            backends.append(backend)
        else:
            dns_backends.append(backend)
    if len(backends) + len(dns_backends) != len(items):
        return None
    return tuple(backends), tuple(dns_backends)


def _build_backend(
    problems: _Problems, value: Any, path: str, line: int
) -> BackendConfig | DnsBackendConfig | None:
    if isinstance(value, str):
        try:
            return BackendConfig(address=parse_address(value, allow_port_zero=False))
        except ValueError as exc:
            problems.add(line, path, str(exc))
            return None
    sec = _as_section(problems, value, path, line, _BACKEND_KEYS)
    if sec is None:
        return None
    default = _BACKEND_DEFAULTS
    weight = sec.get("weight", _int(1, 1000), default.weight)
    max_connections = sec.get("max_connections", _int(1), default.max_connections)
    proxy_protocol = sec.get("proxy_protocol", _choice(_PROXY_PROTOCOL_VERSIONS), default.proxy_protocol)
    if "dns" in sec.node:
        if "address" in sec.node:
            sec.error("dns", "give either 'address' or 'dns', not both")
            return None
        name = sec.require("dns", _dns_target)
        if name is None:
            return None
        return DnsBackendConfig(
            name=name.host,
            port=name.port,
            weight=weight,
            max_connections=max_connections,
            proxy_protocol=proxy_protocol,
        )
    address = sec.require("address", _address(allow_port_zero=False), " (or 'dns' for backends found in DNS)")
    if address is None:
        return None
    return BackendConfig(
        address=address,
        weight=weight,
        max_connections=max_connections,
        proxy_protocol=proxy_protocol,
    )


def _build_health_check(pool: _Section) -> HealthCheckConfig | None:
    switch = _switchable(pool, "health_check")
    if switch is not None:
        return HealthCheckConfig() if switch else None
    sec = pool.section("health_check", _HEALTH_KEYS)
    if sec is None:
        return None
    default = _HEALTH_DEFAULTS
    method = sec.get("method", _str, default.method)
    if not _METHOD_RE.fullmatch(method):
        sec.error("method", f"invalid HTTP method {method!r}")
    return HealthCheckConfig(
        type=sec.get("type", _choice(_HEALTH_CHECK_TYPES), default.type),
        interval=sec.get("interval", _duration(positive=True), default.interval),
        timeout=sec.get("timeout", _duration(positive=True), default.timeout),
        healthy_threshold=sec.get("healthy_threshold", _int(1), default.healthy_threshold),
        unhealthy_threshold=sec.get("unhealthy_threshold", _int(1), default.unhealthy_threshold),
        method=method.upper(),
        path=sec.get("path", _url_path, default.path),
        host=sec.get("host", _token, default.host),
        expect_status=sec.get("expect_status", parse_status_ranges, default.expect_status),
        expect_body=sec.get("expect_body", _text, default.expect_body),
    )


def _build_outlier(pool: _Section) -> OutlierConfig | None:
    """Absent: on with defaults; ``false``: off; ``true``: defaults; a mapping: those settings."""
    if "outlier_detection" not in pool.node:
        return _OUTLIER_DEFAULTS
    switch = _switchable(pool, "outlier_detection")
    if switch is not None:
        return OutlierConfig() if switch else None
    sec = pool.section("outlier_detection", _OUTLIER_KEYS)
    if sec is None:
        return _OUTLIER_DEFAULTS
    default = _OUTLIER_DEFAULTS
    return OutlierConfig(
        consecutive_failures=sec.get("consecutive_failures", _int(0), default.consecutive_failures),
        consecutive_5xx=sec.get("consecutive_5xx", _int(0), default.consecutive_5xx),
        base_ejection_time=sec.get("base_ejection_time", _duration(positive=True), default.base_ejection_time),
        max_ejection_time=sec.get("max_ejection_time", _duration(positive=True), default.max_ejection_time),
        max_ejection_percent=sec.get("max_ejection_percent", _int(0, 100), default.max_ejection_percent),
    )


def _build_cookie(pool: _Section) -> CookieConfig:
    default = _COOKIE_DEFAULTS
    sec = pool.section("cookie", _COOKIE_KEYS)
    if sec is None:
        return default
    same_site: str | None = default.same_site
    if "same_site" in sec.node and sec.node["same_site"] is None:
        same_site = None
    else:
        same_site_choice = _choice(_SAME_SITES, ignore_case=True)
        same_site = sec.get("same_site", same_site_choice, same_site)
    name = sec.get("name", _str, default.name)
    if not _COOKIE_NAME_RE.fullmatch(name):
        sec.error("name", f"invalid cookie name {name!r}")
    return CookieConfig(
        name=name,
        path=sec.get("path", _url_path, default.path),
        max_age=sec.get("max_age", _int(0), default.max_age),
        http_only=sec.get("http_only", _bool, default.http_only),
        secure=sec.get("secure", _bool, default.secure),
        same_site=same_site,  # type: ignore[arg-type]
        secret=sec.get("secret", _text, default.secret),
        fallback=sec.get("fallback", _fallback_strategy, default.fallback),
    )


def _fallback_strategy(value: Any) -> str:
    name = _strategy(value)
    if name == "cookie_affinity":
        raise ValueError("the fallback of cookie_affinity must be another strategy")
    return name


# ---- admin and access log


def _build_admin(top: _Section, ctx: _Context) -> AdminConfig | None:
    """Absent or ``false``: no admin listener; ``true`` or a mapping: one (loopback by default)."""
    switch = _switchable(top, "admin")
    if switch is False:
        return None
    if switch is True:
        bind, token = _ADMIN_DEFAULT_BIND, None
        ctx.binds.append(_Bind(bind, top.line("admin"), top.sub("admin"), "the admin listener"))
        return AdminConfig(bind=bind)
    sec = top.section("admin", _ADMIN_KEYS)
    if sec is None:
        return None
    bind = sec.get("bind", _address(allow_port_zero=True), _ADMIN_DEFAULT_BIND)
    token = sec.get("token", _token, None)
    ctx.binds.append(_Bind(bind, sec.line("bind"), sec.sub("bind"), "the admin listener"))
    return AdminConfig(bind=bind, token=token)


def _build_access_log(top: _Section) -> AccessLogConfig | None:
    switch = _switchable(top, "access_log")
    if switch is not None:
        return AccessLogConfig() if switch else None
    sec = top.section("access_log", _ACCESS_LOG_KEYS)
    if sec is None:
        return None
    default = _ACCESS_LOG_DEFAULTS
    return AccessLogConfig(
        format=sec.get(
            "format", _choice(_ACCESS_LOG_FORMATS), default.format
        ),
        path=sec.get("path", _str, default.path),
    )


# ---- listeners


def _build_listeners(top: _Section, ctx: _Context) -> tuple[ListenerConfig, ...] | None:
    if "listeners" not in top.node:
        top.missing("listeners")
        return None
    items = top.items("listeners")
    if items is None:
        return None
    if not items:
        top.error("listeners", "at least one listener is required")
        return None
    listeners: list[ListenerConfig] = []
    names: dict[str, int] = {}
    for line, path, value in items:
        sec = _as_section(ctx.problems, value, path, line, _LISTENER_KEYS)
        if sec is None:
            continue
        name = sec.require("name", _name)
        if name is not None:
            if name in names:
                sec.error("name", f"duplicate listener name '{name}' (first at line {names[name]})")
            names.setdefault(name, sec.line("name"))
        listener = _build_listener(sec, ctx, name)
        if listener is not None:
            listeners.append(listener)
    return tuple(listeners) if len(listeners) == len(items) else None


def _build_listener(sec: _Section, ctx: _Context, name: str | None) -> ListenerConfig | None:
    bind = sec.require("bind", _address(allow_port_zero=True))
    if bind is not None:
        label = f"listener '{name}'" if name else f"listener {sec.path}"
        ctx.binds.append(_Bind(bind, sec.line("bind"), sec.sub("bind"), label))
    mode = sec.require("mode", _choice(_LISTENER_MODES)) if "mode" in sec.node else "http"
    pool: str | None = None
    routes: tuple[RouteConfig, ...] = ()
    dns: DnsConfig | None = None
    shape_ok = False
    if mode == "dns":
        dns = _build_dns(sec, ctx)
        shape_ok = dns is not None
    elif mode is not None:
        for key in ("zone", "ttl", "max_answers", "records"):
            if key in sec.node:
                sec.error(key, f"'{key}' is for dns listeners only")
        pool, routes, shape_ok = _listener_targets(sec, ctx, mode)
    default = _LISTENER_DEFAULTS
    max_connections = sec.get("max_connections", _int(1), default.max_connections)
    idle_timeout = sec.get("idle_timeout", _duration(positive=True), default.idle_timeout)
    backlog = sec.get("backlog", _int(1, 65535), default.backlog)
    accept_sockets = sec.get("accept_sockets", _int(1, 64), default.accept_sockets)
    if mode == "dns" and "accept_sockets" in sec.node:
        sec.error("accept_sockets", "'accept_sockets' is for tcp and http listeners (a dns listener accepts nothing)")
    accept_proxy = sec.get("accept_proxy_protocol", _bool, default.accept_proxy_protocol)
    proxy_from = sec.get("proxy_protocol_from", _cidrs, default.proxy_protocol_from)
    trusted_proxies = sec.get("trusted_proxies", _cidrs, default.trusted_proxies)
    limits = _build_limits(sec)
    tls = _build_server_tls(sec) if mode == "http" else None
    redirect_https = sec.get("redirect_https", _bool, False)
    client_hello_timeout = sec.get("client_hello_timeout", _duration(positive=True), 5.0)
    sni_routes = _build_sni_routes(sec, ctx) if mode == "tcp" else ()
    if mode != "http":
        for key in ("tls", "redirect_https"):
            if key in sec.node:
                sec.error(key, f"'{key}' is for http listeners (a tcp listener passes TLS through: use sni_routes)")
    if mode != "tcp" and "sni_routes" in sec.node:
        sec.error("sni_routes", "'sni_routes' is for tcp listeners")
    splice = sec.get("splice", _bool, False)
    if mode != "tcp" and "splice" in sec.node:
        sec.error("splice", "'splice' is for tcp listeners (an http listener reads what it relays)")
    if tls is not None and redirect_https:
        sec.error("redirect_https", "a listener that terminates TLS cannot also redirect to https")
    per_client = sec.get("max_connections_per_client", _int(1), None)
    rate_limit = _build_rate_limit(sec)
    if rate_limit is not None and mode != "http":
        sec.error("rate_limit", "'rate_limit' is for http listeners (tcp: use max_connections_per_client)")
    if sni_routes is None:
        return None
    if name is None or bind is None or mode is None or not shape_ok:
        return None
    return ListenerConfig(
        name=name,
        bind=bind,
        mode=mode,
        pool=pool,
        routes=routes,
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        backlog=backlog,
        accept_sockets=accept_sockets,
        accept_proxy_protocol=accept_proxy,
        proxy_protocol_from=proxy_from,
        trusted_proxies=trusted_proxies,
        limits=limits,
        dns=dns,
        tls=tls,
        redirect_https=redirect_https,
        sni_routes=sni_routes,
        client_hello_timeout=client_hello_timeout,
        splice=splice,
        max_connections_per_client=per_client,
        rate_limit=rate_limit,
    )


def _build_rate_limit(listener: _Section) -> RateLimitConfig | None:
    sec = listener.section("rate_limit", _RATE_LIMIT_KEYS)
    if sec is None:
        return None
    rate = sec.require("requests_per_second", _positive_number)
    burst = sec.get("burst", _int(1, 1_000_000), 20)
    if rate is None:
        return None
    return RateLimitConfig(requests_per_second=rate, burst=burst)


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected a number greater than 0, got {describe(value)}")
    return float(value)


def _build_server_tls(listener: _Section) -> TlsServerConfig | None:
    sec = listener.section("tls", _TLS_SERVER_KEYS)
    if sec is None:
        return None
    items = sec.items("certificates")
    if items is None:
        if "certificates" not in sec.node:
            sec.missing("certificates", " (a list of {cert, key} PEM files; the first is the default)")
        return None
    certificates: list[TlsCertificate] = []
    for line, path, value in items:
        cert_sec = _as_section(sec.problems, value, path, line, _TLS_CERT_KEYS)
        if cert_sec is None:
            continue
        cert = cert_sec.require("cert", _str)
        key = cert_sec.require("key", _str)
        if cert is not None and key is not None:
            certificates.append(TlsCertificate(cert=_resolve_path(sec, cert), key=_resolve_path(sec, key)))
    if not items:
        sec.error("certificates", "at least one certificate is required")
        return None
    if len(certificates) != len(items):
        return None
    alpn_value = sec.node.get("alpn", ["http/1.1"])
    alpn = tuple(alpn_value) if isinstance(alpn_value, list) and all(isinstance(a, str) for a in alpn_value) else None
    if alpn is None:
        sec.error("alpn", "expected a list of protocol names, e.g. [http/1.1]")
        alpn = ("http/1.1",)
    config = TlsServerConfig(
        certificates=tuple(certificates),
        min_version=sec.get("min_version", _choice(_TLS_VERSIONS), "1.2"),
        alpn=alpn,
    )
    from lbproxy.tls.contexts import ServerTls, TlsError

    try:
        ServerTls(config)
    except TlsError as exc:
        sec.error("certificates", str(exc))
        return None
    return config


def _resolve_path(sec: _Section, path: str) -> str:
    """Relative paths are relative to the config file's directory."""
    import os

    source = sec.problems.source
    if os.path.isabs(path) or source.startswith("<"):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(source)), path)


def _build_upstream_tls(pool: _Section) -> UpstreamTlsConfig | None:
    switch = _switchable(pool, "tls")
    if switch is not None:
        return UpstreamTlsConfig() if switch else None
    sec = pool.section("tls", _TLS_UPSTREAM_KEYS)
    if sec is None:
        return None
    ca_file = sec.get("ca_file", _str, None)
    config = UpstreamTlsConfig(
        verify=sec.get("verify", _bool, True),
        ca_file=_resolve_path(sec, ca_file) if ca_file is not None else None,
        server_name=sec.get("server_name", _token, None),
    )
    from lbproxy.tls.contexts import TlsError, upstream_context

    try:
        upstream_context(config)
    except TlsError as exc:
        sec.error("ca_file", str(exc))
        return None
    return config


def _build_sni_routes(listener: _Section, ctx: _Context) -> tuple[SniRoute, ...] | None:
    if "sni_routes" not in listener.node:
        return ()
    items = listener.items("sni_routes")
    if items is None:
        return None
    routes: list[SniRoute] = []
    for line, path, value in items:
        sec = _as_section(listener.problems, value, path, line, _SNI_ROUTE_KEYS)
        if sec is None:
            continue
        name = sec.require("server_name", _match_host)
        pool = sec.require("pool", _str)
        if name is None or pool is None or not _check_pool_ref(sec, "pool", pool, ctx):
            continue
        routes.append(SniRoute(server_name=name, pool=pool))
    return tuple(routes) if len(routes) == len(items) else None


def _build_dns(sec: _Section, ctx: _Context) -> DnsConfig | None:
    """``zone``, ``records`` (name -> pool), ``ttl`` and ``max_answers`` of a dns listener."""
    for key in ("pool", "routes"):
        if key in sec.node:
            sec.error(key, f"a dns listener cannot have '{key}'; map names to pools under 'records'")
    zone = sec.require("zone", _dns_zone, " (the domain this listener answers for)")
    ttl = sec.get("ttl", _int(0, 86400), 5)
    max_answers = sec.get("max_answers", _int(1, 64), 8)
    value = sec.node.get("records")
    if value is None:
        sec.missing("records", " (a mapping of names to pools)")
        return None
    if not isinstance(value, _Map) or not value:
        sec.error("records", f"expected a non-empty mapping of names to pools, got {describe(value)}")
        return None
    records: list[tuple[str, str]] = []
    ok = zone is not None
    for name, pool in value.items():
        line = value.key_lines.get(name, value.line)
        path = _join(sec.sub("records"), str(name))
        if not isinstance(pool, str) or pool not in ctx.pool_names:
            suggestion = _suggest(str(pool), ctx.pool_names)
            sec.problems.add(line, path, f"undefined pool '{pool}'{suggestion}")
            ok = False
            continue
        if zone is None:
            continue
        text = str(name).lower().rstrip(".")
        fqdn = zone if text == "@" else (text if text == zone or text.endswith("." + zone) else f"{text}.{zone}")
        if not is_dns_name(fqdn):
            sec.problems.add(line, path, f"invalid DNS name {name!r}")
            ok = False
            continue
        records.append((fqdn, pool))
    if not ok or zone is None:
        return None
    return DnsConfig(zone=zone, records=tuple(records), ttl=ttl, max_answers=max_answers)


def _dns_zone(value: Any) -> str:
    text = _str(value).lower().rstrip(".")
    if not is_dns_name(text) or "." not in text:
        raise ValueError(f"invalid zone {value!r}: expected a domain name such as 'svc.example.com'")
    return text


def _listener_targets(
    sec: _Section, ctx: _Context, mode: str
) -> tuple[str | None, tuple[RouteConfig, ...], bool]:
    """``(pool, routes, ok)`` for a listener: tcp takes exactly a pool, http a list of routes."""
    if mode == "tcp":
        ok = True
        if "routes" in sec.node:
            sec.error("routes", "a tcp listener cannot have routes; name one pool with 'pool'")
            ok = False
        pool = sec.require("pool", _str, " (a tcp listener forwards to one pool)")
        if pool is not None and not _check_pool_ref(sec, "pool", pool, ctx):
            ok = False
        if pool is not None and ctx.pool_strategies.get(pool) == "cookie_affinity":
            sec.error(
                "pool",
                f"pool '{pool}' uses strategy cookie_affinity, which needs HTTP; "
                "a tcp listener cannot use it",
            )
            ok = False
        return pool, (), ok and pool is not None
    ok = True
    if "pool" in sec.node:
        sec.error(
            "pool",
            "an http listener cannot have 'pool'; use routes "
            "(a route without match takes everything)",
        )
        ok = False
    if "routes" not in sec.node:
        sec.missing("routes", " (an http listener needs at least one route)")
        return None, (), False
    routes = _build_routes(sec, ctx)
    return None, routes or (), ok and routes is not None


def _check_pool_ref(sec: _Section, key: str, pool: str, ctx: _Context) -> bool:
    if pool in ctx.pool_names:
        return True
    sec.error(key, f"undefined pool '{pool}'{_suggest(pool, ctx.pool_names)}")
    return False


def _build_routes(listener: _Section, ctx: _Context) -> tuple[RouteConfig, ...] | None:
    items = listener.items("routes")
    if items is None:
        return None
    if not items:
        listener.error("routes", "an http listener needs at least one route")
        return None
    routes: list[RouteConfig] = []
    names: dict[str, int] = {}
    for index, (line, path, value) in enumerate(items):
        route = _build_route(ctx, value, path, line, index)
        if route is None:
            continue
        if route.name in names:
            message = f"duplicate route name '{route.name}' (first at line {names[route.name]})"
            ctx.problems.add(line, f"{path}.name", message)
        names.setdefault(route.name or "", line)
        routes.append(route)
    return tuple(routes) if len(routes) == len(items) else None


def _build_route(ctx: _Context, value: Any, path: str, line: int, index: int) -> RouteConfig | None:
    sec = _as_section(ctx.problems, value, path, line, _ROUTE_KEYS)
    if sec is None:
        return None
    name = sec.get("name", _name, f"route{index}")
    match = _build_match(sec)
    actions = [key for key in ("pool", "split", "redirect") if sec.node.get(key) is not None]
    if not actions:
        sec.missing("pool", "(a route needs one of pool, split or redirect)")
        return None
    if len(actions) > 1:
        sec.error(actions[1], f"a route takes one of pool, split or redirect, not {' and '.join(actions)}")
        return None
    pool: str | None = None
    split: tuple[SplitTarget, ...] = ()
    redirect: RedirectConfig | None = None
    ok = True
    if actions[0] == "pool":
        pool = sec.require("pool", _str)
        ok = pool is not None and _check_pool_ref(sec, "pool", pool, ctx)
    elif actions[0] == "split":
        built = _build_split(sec, ctx)
        ok = built is not None
        split = built or ()
    else:
        redirect = _build_redirect(sec)
        ok = redirect is not None
    split_cookie = None
    switch = _switchable(sec, "split_cookie")
    if switch is True:
        split_cookie = SplitCookieConfig()
    elif switch is None:
        split_cookie = _build_split_cookie(sec)
    if split_cookie is not None and not split:
        sec.error("split_cookie", "split_cookie needs a split")
    rewrite = _build_rewrite(sec)
    if rewrite is not None and rewrite.path_prefix is not None:
        if match.path_prefix is None and match.path_separated_prefix is None:
            sec.error("rewrite", "rewrite.path_prefix replaces the matched prefix: the match needs path_prefix or path_separated_prefix")
    if redirect is not None and redirect.path_prefix is not None:
        if match.path_prefix is None and match.path_separated_prefix is None:
            sec.error("redirect", "redirect.path_prefix replaces the matched prefix: the match needs path_prefix or path_separated_prefix")
    request_headers, response_headers = _build_route_headers(sec)
    timeout = sec.get("timeout", _duration(positive=True), None)
    retries = sec.get("retries", _int(0, 100), None)
    if not ok:
        return None
    return RouteConfig(
        pool=pool,
        match=match,
        name=name,
        split=split,
        split_cookie=split_cookie,
        rewrite=rewrite,
        redirect=redirect,
        request_headers=request_headers,
        response_headers=response_headers,
        timeout=timeout,
        retries=retries,
    )


def _build_split(route: _Section, ctx: _Context) -> tuple[SplitTarget, ...] | None:
    items = route.items("split")
    if items is None:
        return None
    if len(items) < 1:
        route.error("split", "a split needs at least one {pool, weight}")
        return None
    targets: list[SplitTarget] = []
    for line, path, value in items:
        sec = _as_section(route.problems, value, path, line, _SPLIT_KEYS)
        if sec is None:
            continue
        pool = sec.require("pool", _str)
        weight = sec.get("weight", _int(0, 1_000_000), 1)
        if pool is None or not _check_pool_ref(sec, "pool", pool, ctx):
            continue
        targets.append(SplitTarget(pool=pool, weight=weight))
    if len(targets) != len(items):
        return None
    if not any(t.weight for t in targets):
        route.error("split", "at least one split weight must be greater than 0")
        return None
    return tuple(targets)


def _build_split_cookie(route: _Section) -> SplitCookieConfig | None:
    sec = route.section("split_cookie", _SPLIT_COOKIE_KEYS)
    if sec is None:
        return None
    default = SplitCookieConfig()
    name = sec.get("name", _str, default.name)
    if not _COOKIE_NAME_RE.fullmatch(name):
        sec.error("name", f"invalid cookie name {name!r}")
    same_site = sec.node.get("same_site", default.same_site)
    return SplitCookieConfig(
        name=name,
        path=sec.get("path", _url_path, default.path),
        max_age=sec.get("max_age", _int(0), default.max_age),
        http_only=sec.get("http_only", _bool, default.http_only),
        secure=sec.get("secure", _bool, default.secure),
        same_site=None if same_site is None else sec.get(
            "same_site", _choice(_SAME_SITES, ignore_case=True), default.same_site
        ),
    )


def _build_rewrite(route: _Section) -> RewriteConfig | None:
    sec = route.section("rewrite", _REWRITE_KEYS)
    if sec is None:
        return None
    return RewriteConfig(
        path_prefix=sec.get("path_prefix", _url_path, None),
        strip_prefix=sec.get("strip_prefix", _url_path, None),
        host=sec.get("host", _token, None),
    )


def _build_redirect(route: _Section) -> RedirectConfig | None:
    sec = route.section("redirect", _REDIRECT_KEYS)
    if sec is None:
        return None
    default = RedirectConfig()
    status = sec.get("status", _int(300, 399), default.status)
    if status not in (301, 302, 303, 307, 308):
        sec.error("status", f"redirect status must be 301, 302, 303, 307 or 308, got {status}")
    return RedirectConfig(
        status=status,
        scheme=sec.get("scheme", _choice(("http", "https")), None),
        host=sec.get("host", _token, None),
        port=sec.get("port", _int(1, 65535), None),
        path=sec.get("path", _url_path, None),
        path_prefix=sec.get("path_prefix", _url_path, None),
        strip_query=sec.get("strip_query", _bool, False),
    )


def _build_route_headers(route: _Section) -> tuple[HeaderActions, HeaderActions]:
    sec = route.section("headers", _ROUTE_HEADERS_KEYS)
    if sec is None:
        return HeaderActions(), HeaderActions()
    return _build_header_actions(sec, "request"), _build_header_actions(sec, "response")


def _build_header_actions(parent: _Section, key: str) -> HeaderActions:
    sec = parent.section(key, _HEADER_ACTION_KEYS)
    if sec is None:
        return HeaderActions()

    def pairs(which: str) -> tuple[tuple[str, str], ...]:
        value = sec.node.get(which)
        if value is None:
            return ()
        if not isinstance(value, _Map):
            sec.error(which, f"expected a mapping of header name to value, got {describe(value)}")
            return ()
        out = []
        for name, item in value.items():
            if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
                sec.error(which, f"invalid header name {name!r}")
                continue
            text = item if isinstance(item, str) else None
            if isinstance(item, (int, float)) and not isinstance(item, bool):
                text = str(item)
            if text is None or any(c in text for c in "\r\n\0"):
                sec.error(which, f"invalid value for header {name!r}: expected a single-line string")
                continue
            out.append((name, text))
        return tuple(out)

    remove_value = sec.node.get("remove")
    removes: list[str] = []
    if remove_value is not None:
        names = remove_value if isinstance(remove_value, list) else [remove_value]
        for name in names:
            if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
                sec.error("remove", f"invalid header name {name!r}")
                continue
            removes.append(name.lower())
    return HeaderActions(set=pairs("set"), add=pairs("add"), remove=tuple(removes))


def _build_match(route: _Section) -> MatchConfig:
    sec = route.section("match", _MATCH_KEYS)
    if sec is None:
        return MatchConfig()
    regex = sec.get("path_regex", _regex, None)
    methods_value = sec.node.get("method")
    methods: list[str] = []
    if methods_value is not None:
        for method in methods_value if isinstance(methods_value, list) else [methods_value]:
            if not isinstance(method, str) or not _METHOD_RE.fullmatch(method):
                sec.error("method", f"invalid HTTP method {method!r}")
                continue
            methods.append(method.upper())
    return MatchConfig(
        host=sec.get("host", _match_host, None),
        path_prefix=sec.get("path_prefix", _url_path, None),
        path_separated_prefix=sec.get("path_separated_prefix", _separated_prefix, None),
        path=sec.get("path", _url_path, None),
        path_regex=regex,
        methods=tuple(methods),
        headers=_build_value_matches(sec, "headers", lower=True),
        query=_build_value_matches(sec, "query", lower=False),
    )


def _build_value_matches(sec: _Section, key: str, *, lower: bool) -> tuple[ValueMatch, ...]:
    """``{NAME: "exact"}``, ``{NAME: {regex: RE}}``, ``{NAME: {present: true|false}}``."""
    value = sec.node.get(key)
    if value is None:
        return ()
    if not isinstance(value, _Map):
        sec.error(key, f"expected a mapping of name to condition, got {describe(value)}")
        return ()
    out: list[ValueMatch] = []
    for name, condition in value.items():
        path = _join(sec.sub(key), str(name))
        line = value.key_lines.get(name, value.line)
        if not isinstance(name, str) or (lower and not _HEADER_NAME_RE.fullmatch(name)):
            sec.problems.add(line, path, f"invalid name {name!r}")
            continue
        match_name = name.lower() if lower else name
        if isinstance(condition, (str, int, float)) and not isinstance(condition, bool):
            out.append(ValueMatch(match_name, exact=str(condition)))
            continue
        cond = _as_section(sec.problems, condition, path, line, _VALUE_MATCH_KEYS)
        if cond is None:
            continue
        given = [k for k in _VALUE_MATCH_KEYS if cond.node.get(k) is not None]
        if len(given) != 1:
            sec.problems.add(line, path, "give exactly one of exact, regex, present")
            continue
        which = given[0]
        if which == "exact":
            out.append(ValueMatch(match_name, exact=cond.get("exact", _text, "")))
        elif which == "regex":
            out.append(ValueMatch(match_name, regex=cond.get("regex", _regex, "")))
        else:
            out.append(ValueMatch(match_name, present=cond.get("present", _bool, True)))
    return tuple(out)


def _regex(value: Any) -> str:
    text = _str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {text!r}: {exc}") from exc
    return text


def _separated_prefix(value: Any) -> str:
    text = _url_path(value)
    if len(text) > 1 and text.endswith("/"):
        raise ValueError(f"path_separated_prefix must not end with '/', got {text!r} (it matches {text.rstrip('/')} and {text.rstrip('/')}/...)")
    return text


def _build_hash_on(pool: _Section) -> HashOn | None:
    sec = pool.section("hash_on", _HASH_ON_KEYS)
    if sec is None:
        return None
    cookie = sec.get("cookie", _str, None)
    header = sec.get("header", _str, None)
    if (cookie is None) == (header is None):
        sec.error("cookie" if cookie is not None else "header", "give exactly one of cookie or header")
        return None
    if header is not None and not _HEADER_NAME_RE.fullmatch(header):
        sec.error("header", f"invalid header name {header!r}")
        return None
    return HashOn(cookie=cookie, header=header.lower() if header else None)


def _build_limits(listener: _Section) -> HttpLimits:
    default = _LIMITS_DEFAULTS
    sec = listener.section("limits", _LIMITS_KEYS)
    if sec is None:
        return default
    return HttpLimits(
        max_header_bytes=sec.get("max_header_bytes", _int(256), default.max_header_bytes),
        max_header_count=sec.get("max_header_count", _int(1), default.max_header_count),
        max_body_bytes=sec.get("max_body_bytes", _int(0), default.max_body_bytes),
        request_header_timeout=sec.get(
            "request_header_timeout", _duration(positive=True), default.request_header_timeout
        ),
        keepalive_timeout=sec.get(
            "keepalive_timeout", _duration(positive=True), default.keepalive_timeout
        ),
        client_timeout=sec.get("client_timeout", _duration(positive=True), default.client_timeout),
        min_body_rate=sec.get("min_body_rate", _int(0), default.min_body_rate),
    )


# ---- cross checks


def _clashes(a: Address, b: Address) -> bool:
    if a.port != b.port or a.port == 0:
        return False
    return a.host == b.host or a.host in _WILDCARD_HOSTS or b.host in _WILDCARD_HOSTS


def _check_bind_clashes(ctx: _Context) -> None:
    """Report every bind that clashes with an earlier one (port 0 never clashes)."""
    binds = sorted(ctx.binds, key=lambda b: b.line)
    for index, bind in enumerate(binds):
        for earlier in binds[:index]:
            if _clashes(earlier.address, bind.address):
                ctx.problems.add(
                    bind.line,
                    bind.path,
                    f"address {bind.address} clashes with {earlier.label} on "
                    f"{earlier.address} (line {earlier.line})",
                )
                break

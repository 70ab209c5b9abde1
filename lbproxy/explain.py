"""``lbproxy explain``: which route a request takes and why, without contacting any backend."""

from __future__ import annotations

from urllib.parse import urlsplit

from lbproxy.balancing.cookie_affinity import AffinityCookie
from lbproxy.config.model import Config, ListenerConfig
from lbproxy.l7.headers import cookie_value
from lbproxy.pool.pool import Pool
from lbproxy.routing.actions import CompiledHeaderActions, redirect_location, rewrite_path
from lbproxy.routing.paths import normalize_path
from lbproxy.routing.table import RequestView, RouteTable


class ExplainError(ValueError):
    """The request given to explain can't be understood."""


def parse_request_line(text: str) -> tuple[str, str, str, str]:
    """``'GET http://host/path?q'`` (or ``'GET /path'``) -> (method, host with port, path, query)."""
    parts = text.split(None, 1)
    if len(parts) == 1:
        method, target = "GET", parts[0]
    else:
        method, target = parts[0].upper(), parts[1].strip()
    if target.startswith("/"):
        path, _, query = target.partition("?")
        return method, "", path, query
    split = urlsplit(target if "://" in target else "http://" + target)
    if not split.netloc:
        raise ExplainError(f"cannot read a URL from {target!r}")
    return method, split.netloc, split.path or "/", split.query


def choose_listener(config: Config, host_with_port: str, name: str | None) -> ListenerConfig:
    http = [lc for lc in config.listeners if lc.mode == "http"]
    if name is not None:
        for lc in config.listeners:
            if lc.name == name:
                if lc.mode != "http":
                    raise ExplainError(f"listener {name!r} is a tcp listener: it has no routes")
                return lc
        raise ExplainError(f"no listener named {name!r}")
    if not http:
        raise ExplainError("the configuration has no http listener")
    port = host_with_port.rsplit(":", 1)[1] if host_with_port.count(":") == 1 else ""
    for lc in http:
        if port.isdigit() and lc.bind.port == int(port):
            return lc
    return http[0]


def explain(config: Config, request_line: str, headers: list[str], listener_name: str | None = None) -> str:
    """A human-readable account of how ``request_line`` would be routed. Raises ExplainError."""
    method, host_with_port, raw_path, query = parse_request_line(request_line)
    header_pairs: list[tuple[bytes, bytes]] = []
    for header in headers:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ExplainError(f"a header must look like 'Name: value', got {header!r}")
        header_pairs.append((name.strip().encode("latin-1"), value.strip().encode("latin-1")))
    if not host_with_port:
        host_with_port = next((v.decode() for n, v in header_pairs if n.lower() == b"host"), "")
    listener = choose_listener(config, host_with_port, listener_name)
    host = host_with_port.lower()
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    path = normalize_path(raw_path)
    pools = {name: Pool(pc) for name, pc in config.pools.items()}
    table = RouteTable(listener.routes, pools)
    request = RequestView(method, host, path, query, header_pairs)

    out = [f"request   {method} {host_with_port or '(no host)'}{raw_path}{'?' + query if query else ''}"]
    if path != raw_path:
        out.append(f"          path normalised to {path}")
    out.append(f"listener  {listener.name} (http on {listener.bind})")
    out.append("routes")
    matched = None
    for index, (route, reason) in enumerate(table.explain(request), 1):
        if reason is None:
            matched = route
            out.append(f"  {index}. {route.name}: MATCHES")
        else:
            out.append(f"  {index}. {route.name}: no, {reason}")
    if matched is None:
        out.append("result    404: no route matches")
        return "\n".join(out) + "\n"
    config_route = matched.config
    if config_route.redirect is not None:
        location = redirect_location(matched, request, host_with_port)
        out.append(f"result    redirect {config_route.redirect.status} to {location}")
        return "\n".join(out) + "\n"
    if matched.split:
        shares = ", ".join(f"{pool.name} {100 * w / matched.split_total:.1f}%" for pool, w in matched.split)
        out.append(f"split     {shares}")
        cookie_name = config_route.split_cookie.name if config_route.split_cookie else None
        if cookie_name:
            pinned = _cookie(header_pairs, cookie_name)
            names = [pool.name for pool, w in matched.split if w > 0]
            if pinned in names:
                out.append(f"          cookie {cookie_name}={pinned} keeps this client on pool {pinned}")
            else:
                out.append(f"          a cookie {cookie_name} will pin the client to the variant drawn")
    for pool in matched.pools():
        out.extend(_describe_pool(pool, header_pairs))
    new_path = rewrite_path(matched, path)
    upstream_host = config_route.rewrite.host if config_route.rewrite and config_route.rewrite.host else host_with_port
    out.append(f"upstream  {method} {new_path}{'?' + query if query else ''} (Host: {upstream_host or '-'})")
    request_actions = CompiledHeaderActions(config_route.request_headers)
    if not request_actions.empty:
        out.append(f"          request headers: {_describe_actions(config_route.request_headers)}")
    if not CompiledHeaderActions(config_route.response_headers).empty:
        out.append(f"          response headers: {_describe_actions(config_route.response_headers)}")
    if config_route.timeout is not None or config_route.retries is not None:
        out.append(f"          route overrides: timeout={config_route.timeout} retries={config_route.retries}")
    return "\n".join(out) + "\n"


def _cookie(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    for n, v in headers:
        if n.lower() == b"cookie":
            found = cookie_value(v, name.encode())
            if found is not None:
                return found.decode("latin-1")
    return None


def _describe_pool(pool: Pool, headers: list[tuple[bytes, bytes]]) -> list[str]:
    config = pool.config
    out = [f"pool      {pool.name} ({config.strategy}), eligible backends (live health is not known offline):"]
    for backend in pool.backends:
        out.append(f"            {backend.label} weight {backend.weight}")
    if config.strategy == "cookie_affinity":
        cookie = AffinityCookie(config.cookie, pool.name)
        value = _cookie(headers, config.cookie.name)
        target = cookie.backend_for(value, pool.backends) if value else None
        if target is not None:
            out.append(f"          affinity cookie {config.cookie.name} -> {target.label}")
        elif value:
            out.append(f"          affinity cookie {config.cookie.name}={value} names no backend: re-dispatched, cookie re-issued")
        else:
            out.append(f"          no affinity cookie: round robin picks, and the response sets {config.cookie.name}")
    elif config.hash_on is not None or config.strategy == "ip_hash":
        key = None
        if config.hash_on is not None and config.hash_on.cookie:
            key = _cookie(headers, config.hash_on.cookie)
            what = f"cookie {config.hash_on.cookie}"
        elif config.hash_on is not None and config.hash_on.header:
            key = next((v.decode("latin-1") for n, v in headers if n.lower() == config.hash_on.header.encode()), None)
            what = f"header {config.hash_on.header}"
        else:
            what = "client address"
        if key is not None:
            target = pool.strategy.pick(key)
            out.append(f"          {what}={key!r} hashes to {target.label if target else '-'}")
        else:
            out.append(f"          hashes the {what} (falls back to the client address when absent)")
    return out


def _describe_actions(actions: object) -> str:
    from lbproxy.config.model import HeaderActions

    assert isinstance(actions, HeaderActions)
    parts = [f"set {n}: {v}" for n, v in actions.set]
    parts += [f"add {n}: {v}" for n, v in actions.add]
    parts += [f"remove {n}" for n in actions.remove]
    return "; ".join(parts)

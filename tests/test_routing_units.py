"""Route matching and actions as pure logic: normalisation, every matcher, explain reasons."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lbproxy.config.loader import load_config_text
from lbproxy.pool.pool import Pool
from lbproxy.routing.actions import CompiledHeaderActions, choose_split, redirect_location, rewrite_path
from lbproxy.routing.paths import normalize_path
from lbproxy.routing.table import RequestView, RouteTable


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/api/../admin", "/admin"),
        ("/api/%2e%2e/admin", "/admin"),
        ("/api/%2E%2E/%2e/admin/", "/admin/"),
        ("/%61pi/x", "/api/x"),
        ("/a%2fb", "/a%2Fb"),
        ("/a/./b/.", "/a/b/"),
        ("/../../etc", "/etc"),
        ("/a//b", "/a//b"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("*", "*"),
        ("/plain", "/plain"),
    ],
)
def test_normalize_path(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


def table(routes_yaml: str) -> RouteTable:
    config = load_config_text(
        "pools:\n  a: {backends: ['127.0.0.1:1']}\n  b: {backends: ['127.0.0.1:2']}\n"
        "listeners:\n  - name: l\n    bind: 127.0.0.1:0\n    routes:\n" + routes_yaml
    )
    pools = {name: Pool(pc) for name, pc in config.pools.items()}
    return RouteTable(config.listeners[0].routes, pools)


def view(path: str = "/", host: str = "x.test", method: str = "GET", query: str = "", headers=()) -> RequestView:
    return RequestView(method, host, normalize_path(path), query, [(n.encode(), v.encode()) for n, v in headers])


def test_every_matcher_and_explain_reasons() -> None:
    t = table(
        "      - {name: host, match: {host: shop.example.com}, pool: a}\n"
        "      - {name: wild, match: {host: '*.example.com', path: /exact}, pool: a}\n"
        "      - {name: seg, match: {path_separated_prefix: /api}, pool: a}\n"
        "      - {name: re, match: {path_regex: '^/v[0-9]+/'}, pool: a}\n"
        "      - {name: meth, match: {method: [POST, PUT]}, pool: a}\n"
        "      - {name: hdr, match: {headers: {X-Env: canary}}, pool: a}\n"
        "      - {name: hre, match: {headers: {X-Ver: {regex: '^v2'}}}, pool: a}\n"
        "      - {name: hpres, match: {headers: {X-Debug: {present: true}}}, pool: a}\n"
        "      - {name: qry, match: {query: {debug: '1'}}, pool: a}\n"
        "      - {name: qpres, match: {query: {trace: {present: true}}}, pool: a}\n"
        "      - {name: rest, pool: b}\n"
    )
    def name(**kw: object) -> str:
        request = view(**kw)  # type: ignore[arg-type]
        route = t.match(request)
        assert route is not None
        # The data path's route() (no RequestView unless a route needs one) agrees with match().
        fast, built = t.route(request.method.encode(), request.host, request.path, request.query.encode(), request.headers)
        assert fast is route, (fast, route)
        if route is t.routes[0]:
            assert built is None, "a simple first route needs no RequestView"
        return route.name

    assert name(host="shop.example.com") == "host"
    assert name(host="a.example.com", path="/exact") == "wild"
    assert name(host="a.example.com", path="/other") == "rest"
    assert name(path="/api") == "seg" and name(path="/api/x") == "seg"
    assert name(path="/apix") == "rest", "segment-aware prefix"
    assert name(path="/v2/users") == "re"
    assert name(method="PUT") == "meth"
    assert name(headers=[("X-Env", "canary")]) == "hdr"
    assert name(headers=[("X-Env", "prod")]) == "rest"
    assert name(headers=[("x-ver", "v2.1")]) == "hre"
    assert name(headers=[("X-Debug", "")]) == "hpres"
    assert name(query="a=b&debug=1") == "qry"
    assert name(query="trace") == "qpres"
    tried = t.explain(view(path="/apix", headers=[("X-Env", "prod")]))
    reasons = {route.name: reason for route, reason in tried}
    assert reasons["host"] == "host 'x.test' is not 'shop.example.com'"
    assert reasons["seg"] == "path '/apix' is not '/api' or under '/api/'"
    assert reasons["hdr"] == "header 'x-env' is 'prod', not 'canary'"
    assert reasons["hpres"] == "header 'x-debug' is absent"
    assert reasons["rest"] is None


def test_dot_segments_cannot_slip_past_a_guarded_route() -> None:
    t = table("      - {name: admin, match: {path_prefix: /admin}, pool: a}\n      - {name: api, match: {path_prefix: /api/}, pool: b}\n")
    for raw in ("/api/../admin/users", "/api/%2e%2e/admin", "/api/./../admin"):
        route = t.match(view(path=raw))
        assert route is not None and route.name == "admin", raw


def test_weighted_split_distribution_and_sticky_cookie() -> None:
    t = table("      - name: ab\n        split: [{pool: a, weight: 90}, {pool: b, weight: 10}]\n        split_cookie: true\n")
    route = t.routes[0]
    rng = random.Random(7)
    counts = Counter(choose_split(route, None, rng)[0].name for _ in range(20000))
    assert abs(counts["b"] / 20000 - 0.10) < 0.01  # ~7 standard deviations of slack: 0.0021 each
    pool, set_cookie = choose_split(route, "b", rng)
    assert pool.name == "b" and not set_cookie
    pool, set_cookie = choose_split(route, "gone", rng)
    assert set_cookie


def test_rewrites_and_redirects() -> None:
    t = table(
        "      - {name: r1, match: {path_prefix: /api/}, rewrite: {path_prefix: /v2/}, pool: a}\n"
        "      - {name: r2, match: {path_separated_prefix: /svc}, rewrite: {strip_prefix: /svc}, pool: a}\n"
        "      - {name: r3, match: {path_prefix: /old/}, redirect: {status: 308, path_prefix: /new/}}\n"
        "      - {name: r4, match: {path: /secure}, redirect: {scheme: https, status: 301}}\n"
        "      - {name: r5, match: {path: /moved}, redirect: {host: other.test, path: /here, strip_query: true}}\n"
    )
    r1, r2, r3, r4, r5 = t.routes
    assert rewrite_path(r1, "/api/users/7") == "/v2/users/7"
    assert rewrite_path(r2, "/svc/x") == "/x" and rewrite_path(r2, "/svc") == "/"
    assert redirect_location(r3, view(path="/old/a/b", query="q=1"), "shop.test:8080") == "http://shop.test:8080/new/a/b?q=1"
    assert redirect_location(r4, view(path="/secure"), "shop.test:8080") == "https://shop.test/secure"
    assert redirect_location(r5, view(path="/moved", query="x=1"), "shop.test") == "http://other.test/here"


def test_header_actions() -> None:
    from lbproxy.config.model import HeaderActions

    actions = CompiledHeaderActions(HeaderActions(set=(("X-Env", "prod"),), add=(("X-Tag", "b"),), remove=("x-secret",)))
    out = actions.apply([(b"X-Env", b"dev"), (b"X-Secret", b"s"), (b"X-Tag", b"a"), (b"Host", b"h")])
    assert out == [(b"X-Tag", b"a"), (b"Host", b"h"), (b"X-Env", b"prod"), (b"X-Tag", b"b")]


def test_host_index_keeps_config_order_and_stays_bounded() -> None:
    """Routes are tried per Host from a memoised candidate list; first match in config order wins
    whatever mix of exact, wildcard and host-less routes, and the memo stays bounded."""
    t = table(
        "      - {name: wild-a, match: {host: '*.example.com', path_prefix: /a}, pool: a}\n"
        "      - {name: any-b, match: {path_prefix: /b}, pool: b}\n"
        "      - {name: shop, match: {host: shop.example.com}, pool: a}\n"
        "      - {name: other, match: {host: other.test}, pool: a}\n"
        "      - {name: rest, pool: b}\n"
    )

    def name(host: str, path: str) -> str | None:
        route = t.match(view(path, host))
        return route.name if route is not None else None

    for _ in range(2):  # the second pass is answered from the memo
        assert name("shop.example.com", "/a/x") == "wild-a"
        assert name("shop.example.com", "/b") == "any-b"
        assert name("shop.example.com", "/c") == "shop"
        assert name("example.com", "/a") == "rest"  # "*.example.com" needs a subdomain
        assert name("other.test", "/a") == "other"
        assert name("other.test", "/b") == "any-b"
        assert name("nowhere.test", "/a") == "rest"
    for i in range(RouteTable.MAX_HOSTS * 2):
        assert name(f"h{i}.example.com", "/a") == "wild-a"
    assert len(t._by_host) <= RouteTable.MAX_HOSTS
    assert name("shop.example.com", "/c") == "shop"


def test_route_host_memo_validates_formats_and_stays_bounded() -> None:
    from lbproxy.l7 import headers

    assert headers.route_host(b"Shop.Example.COM:8080") == "shop.example.com"
    assert headers.route_host(b"[::1]:80") == "::1"
    assert headers.route_host(b"a b") is None
    assert headers.route_host(b"user@host") is None
    assert headers.route_host(b"a b") is None  # from the memo: still refused
    for i in range(headers._ROUTE_HOSTS_MAX * 2):
        assert headers.route_host(b"h%d.test" % i) == f"h{i}.test"
    assert len(headers._route_hosts) <= headers._ROUTE_HOSTS_MAX


def test_connection_tokens() -> None:
    from lbproxy.l7.headers import connection_tokens, names_more_than_hop_by_hop

    assert connection_tokens(b"Keep-Alive") == [b"keep-alive"]
    assert connection_tokens(b" close ") == [b"close"]
    assert connection_tokens(b"") == [] and connection_tokens(b" , ,") == []
    assert connection_tokens(b"Upgrade, X-Secret ,keep-alive") == [b"upgrade", b"x-secret", b"keep-alive"]
    assert not names_more_than_hop_by_hop([b"keep-alive", b"upgrade"])
    assert names_more_than_hop_by_hop([b"keep-alive", b"x-secret"])
    assert names_more_than_hop_by_hop([b"close"])  # a (reserved) field named Close is stripped too

"""Routing and affinity end to end, against real backends that echo what they received."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.client import Connection, fetch


def web_config(ports: dict[str, list[int]], routes: str, pool_extra: dict[str, str] | None = None) -> str:
    pools = []
    for name, plist in ports.items():
        backends = ", ".join(f'"127.0.0.1:{p}"' for p in plist)
        extra = (pool_extra or {}).get(name, "")
        pools.append(f"          {name}:\n            backends: [{backends}]\n{extra}")
    return (
        "        pools:\n" + "".join(pools) +
        "        listeners:\n          - name: public\n            bind: 127.0.0.1:0\n            routes:\n" + routes
    )  # fmt: skip


async def test_matchers_and_normalisation_route_to_the_right_pool(make_daemon, http_backends) -> None:
    a = await http_backends(1, prefix="a")
    b = await http_backends(1, prefix="b")
    admin = await http_backends(1, prefix="adm")
    daemon = await make_daemon(web_config({"a": a, "b": b, "admin": admin},
        "              - {name: adm, match: {path_prefix: /admin}, pool: admin}\n"
        "              - {name: api, match: {path_separated_prefix: /api, method: [GET, POST]}, pool: a}\n"
        "              - {name: canary, match: {headers: {X-Canary: {present: true}}}, pool: b}\n"
        "              - {name: dbg, match: {query: {debug: '1'}, path_regex: '^/v[0-9]+/'}, pool: b}\n"
        "              - {name: rest, pool: a}\n"))  # fmt: skip
    host, port = daemon.listener_address("public")

    async def backend(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[str, str]:
        r = await fetch(host, port, method, path, headers=headers)
        doc = r.json()
        return doc["backend"], doc["target"]

    assert await backend("/api/x") == ("a1", "/api/x")
    assert await backend("/apix") == ("a1", "/apix")
    assert (await backend("/api", "DELETE"))[0] == "a1"  # falls through to rest
    assert (await backend("/x", headers={"X-Canary": "1"}))[0] == "b1"
    assert await backend("/v2/items?debug=1") == ("b1", "/v2/items?debug=1")
    # dot segments and encoded dots can't slip past /admin; the backend sees the normalised path
    assert await backend("/api/../admin/users") == ("adm1", "/admin/users")
    assert await backend("/api/%2e%2e/admin?q=1") == ("adm1", "/admin?q=1")


async def test_rewrite_redirect_and_header_actions(make_daemon, http_backends) -> None:
    a = await http_backends(1, prefix="a")
    daemon = await make_daemon(web_config({"a": a},
        "              - name: v1\n"
        "                match: {path_separated_prefix: /old-api}\n"
        "                rewrite: {path_prefix: /v2, host: internal.svc}\n"
        "                headers:\n"
        "                  request: {set: {X-Env: prod}, add: {X-Tag: lb}, remove: [X-Secret]}\n"
        "                  response: {set: {X-Served-By: lbproxy}, remove: [X-Backend]}\n"
        "                pool: a\n"
        "              - {name: strip, match: {path_prefix: /svc/}, rewrite: {strip_prefix: /svc}, pool: a}\n"
        "              - {name: moved, match: {path_prefix: /docs/}, redirect: {status: 301, path_prefix: /manual/}}\n"
        "              - {name: secure, match: {path: /login}, redirect: {scheme: https, status: 308}}\n"))  # fmt: skip
    host, port = daemon.listener_address("public")
    r = await fetch(host, port, path="/old-api/users?id=7", host="shop.test",
                    headers={"X-Env": "dev", "X-Secret": "s", "X-Tag": "client"})  # fmt: skip
    doc = r.json()
    assert doc["target"] == "/v2/users?id=7"
    sent = [tuple(h) for h in doc["headers"]]
    assert ("Host", "internal.svc") in sent and ("X-Forwarded-Host", "shop.test") in sent
    assert ("X-Env", "prod") in sent and ("X-Env", "dev") not in sent
    assert [v for n, v in sent if n == "X-Tag"] == ["client", "lb"]
    assert not [n for n, _ in sent if n.lower() == "x-secret"]
    assert r.header("X-Served-By") == "lbproxy" and r.header("X-Backend") is None
    assert (await fetch(host, port, path="/svc/a/b")).json()["target"] == "/a/b"
    r = await fetch(host, port, path="/docs/intro?lang=en", host="shop.test:8080")
    assert r.status == 301 and r.header("Location") == "http://shop.test:8080/manual/intro?lang=en"
    r = await fetch(host, port, path="/login", host="shop.test")
    assert r.status == 308 and r.header("Location") == "https://shop.test/login"
    assert daemon.pools["a"].backends[0].connections_total == 2, "redirects never reach a backend"


async def test_weighted_split_within_tolerance_and_sticky_split_cookie(make_daemon, http_backends) -> None:
    stable = await http_backends(1, prefix="stable")
    canary = await http_backends(1, prefix="canary")
    daemon = await make_daemon(web_config({"stable": stable, "canary": canary},
        "              - name: ab\n"
        "                split: [{pool: stable, weight: 80}, {pool: canary, weight: 20}]\n"
        "                split_cookie: {name: variant}\n"))  # fmt: skip
    host, port = daemon.listener_address("public")
    conn = await Connection.open(host, port)
    counts: Counter[str] = Counter()
    n = 1000
    for _ in range(n):
        counts[(await conn.request()).json()["backend"]] += 1
    await conn.close()
    share = counts["canary1"] / n
    assert abs(share - 0.20) < 0.05, counts  # > 3.9 standard deviations (0.0126) of slack
    r = await fetch(host, port)
    cookie = r.header("Set-Cookie")
    assert cookie is not None and cookie.startswith("variant=")
    variant = cookie.split(";")[0].split("=")[1]
    for _ in range(20):
        r = await fetch(host, port, headers={"Cookie": f"variant={variant}"})
        assert r.json()["backend"] == f"{variant}1" and r.header("Set-Cookie") is None


async def test_cookie_affinity_insert_indirect_nocache_and_failover(make_daemon, restartable) -> None:
    backends = await restartable(3)
    pool = "          cart:\n            strategy: cookie_affinity\n            backends: [" + ", ".join(
        f'"{b.address}"' for b in backends) + "]\n            cookie: {name: SRV, secret: s3cret, max_age: 3600}\n"  # fmt: skip
    text = (
        "        pools:\n" + pool +
        "        listeners:\n          - name: public\n            bind: 127.0.0.1:0\n            routes: [{pool: cart}]\n"
    )  # fmt: skip
    first = await make_daemon(text)
    second = await make_daemon(text)
    h1, p1 = first.listener_address("public")
    h2, p2 = second.listener_address("public")
    r = await fetch(h1, p1, headers={"Cookie": "theme=dark"})
    owner = r.json()["backend"]
    set_cookie = r.header("Set-Cookie")
    assert set_cookie is not None and set_cookie.startswith("SRV=") and "Max-Age=3600" in set_cookie
    assert "127.0.0.1" not in set_cookie, "the value is opaque"
    assert r.header("Cache-Control") == "private", "nocache: a shared cache must not pin everyone"
    value = set_cookie.split(";")[0]
    for host, port in ((h1, p1), (h2, p2), (h2, p2)):  # a second instance honours the cookie
        r = await fetch(host, port, headers={"Cookie": f"theme=dark; {value}"})
        doc = r.json()
        assert doc["backend"] == owner and r.header("Set-Cookie") is None
        cookies = [v for n, v in doc["headers"] if n.lower() == "cookie"]
        assert cookies == ["theme=dark"], "indirect: the application never sees the affinity cookie"
    index = int(owner[1:]) - 1
    await backends[index].stop()
    r = await fetch(h1, p1, headers={"Cookie": value})
    assert r.status == 200 and r.json()["backend"] != owner, "the cookie's backend is gone: redispatched"
    reissued = r.header("Set-Cookie")
    assert reissued is not None and reissued.split(";")[0] != value


async def test_hash_on_cookie_is_consistent_and_only_moves_users_of_a_removed_backend(make_daemon, restartable) -> None:
    backends = await restartable(4)
    pool = "          shop:\n            strategy: ip_hash\n            hash_on: {cookie: user_id}\n            backends: [" + ", ".join(
        f'"{b.address}"' for b in backends) + "]\n"  # fmt: skip
    text = (
        "        pools:\n" + pool +
        "        listeners:\n          - name: public\n            bind: 127.0.0.1:0\n            routes: [{pool: shop}]\n"
    )  # fmt: skip
    daemon = await make_daemon(text)
    host, port = daemon.listener_address("public")

    async def placement() -> dict[int, str]:
        out = {}
        for user in range(60):
            r = await fetch(host, port, headers={"Cookie": f"user_id=u{user}"})
            out[user] = r.json()["backend"]
        return out

    before = await placement()
    assert before == await placement(), "the same user always lands on the same backend"
    assert len(set(before.values())) == 4
    await backends[1].stop()
    daemon.pools["shop"].backends[1].set_checked_up(False, "test")
    after = await placement()
    moved = {u for u in before if before[u] != after[u]}
    assert moved == {u for u in before if before[u] == "b2"}, "only the users of the removed backend move"
    await asyncio.sleep(0)


async def test_per_route_timeout_and_retries_override_the_pool(make_daemon, servers, http_backends) -> None:
    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            asyncio.get_running_loop().call_later(
                1.0, self.transport.write, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
            )

    slow = await servers(Slow)
    live = await http_backends(1)
    from tests.conftest import unused_port

    dead = unused_port()
    daemon = await make_daemon(
        f"""
        pools:
          slow: {{backends: ["127.0.0.1:{slow.sockets[0].getsockname()[1]}"]}}
          mixed: {{strategy: round_robin, backends: ["127.0.0.1:{dead}", "127.0.0.1:{live[0]}"], outlier_detection: false}}
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes:
              - {{name: quick, match: {{path: /quick}}, timeout: 0.3s, pool: slow}}
              - {{name: patient, match: {{path: /patient}}, pool: slow}}
              - {{name: noretry, match: {{path: /noretry}}, retries: 0, pool: mixed}}
              - {{name: retry, pool: mixed}}
        """
    )
    host, port = daemon.listener_address("public")
    loop = asyncio.get_running_loop()
    start = loop.time()
    r = await fetch(host, port, path="/quick")
    assert r.status == 504 and loop.time() - start < 0.9
    assert (await fetch(host, port, path="/patient")).status == 200
    statuses = [(await fetch(host, port, path="/noretry")).status for _ in range(4)]
    assert sorted(statuses) == [200, 200, 502, 502], "retries: 0 never tries a second backend"
    for _ in range(4):
        assert (await fetch(host, port, path="/other")).status == 200, "the pool's retries fail over"


async def test_cookie_affinity_fallback_strategy_is_configurable(make_daemon, servers, http_backends) -> None:
    """Requests without a usable cookie are placed by the configured fallback (least connections
    here: the idle backend gets the new client while the other one is busy)."""

    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            asyncio.get_running_loop().call_later(
                0.5, self.transport.write, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
            )

    slow = await servers(Slow)
    fast = await http_backends(1, prefix="fast")
    daemon = await make_daemon(
        f"""
        pools:
          cart:
            strategy: cookie_affinity
            cookie: {{fallback: least_connections}}
            backends: ["127.0.0.1:{slow.sockets[0].getsockname()[1]}", "127.0.0.1:{fast[0]}"]
        listeners:
          - {{name: public, bind: 127.0.0.1:0, routes: [{{pool: cart}}]}}
        """
    )
    host, port = daemon.listener_address("public")
    busy = [await Connection.open(host, port) for _ in range(2)]
    for conn in busy:  # one lands on each backend; the fast one answers at once
        await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.1)
    for _ in range(4):
        r = await fetch(host, port)
        assert r.status == 200 and r.json()["backend"] == "fast1", "least connections avoids the busy one"
    for conn in busy:
        await conn.read_response()
        await conn.close()

"""The http listener end to end: real daemon on port 0, real backends, real clients."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter

import pytest

from tests.client import Connection, fetch
from tests.conftest import unused_port


def two_pool_config(web: list[int], api: list[int], strategy: str = "round_robin", weights: list[int] | None = None) -> str:
    weights = weights or [1] * len(web)
    web_lines = "\n".join(f"          - address: 127.0.0.1:{p}\n            weight: {w}" for p, w in zip(web, weights))
    api_lines = "\n".join(f"          - address: 127.0.0.1:{p}" for p in api)
    return f"""
    admin:
      bind: 127.0.0.1:0
    pools:
      web:
        strategy: {strategy}
        backends:
{web_lines}
      api:
        backends:
{api_lines}
    listeners:
      - name: public
        bind: 127.0.0.1:0
        mode: http
        routes:
          - match: {{host: shop.example.com, path_prefix: /api/}}
            pool: api
          - match: {{path_prefix: /static/}}
            pool: web
          - match: {{host: "*.example.com"}}
            pool: web
    """


async def test_round_robin_rotates_over_backends(make_daemon, http_backends) -> None:
    web = await http_backends(3)
    api = await http_backends(1, prefix="api")
    daemon = await make_daemon(two_pool_config(web, api))
    host, port = daemon.listener_address("public")
    seen = [(await fetch(host, port, path="/static/x")).json()["backend"] for _ in range(6)]
    assert seen == ["b1", "b2", "b3", "b1", "b2", "b3"]


async def test_weighted_round_robin_is_smooth(make_daemon, http_backends) -> None:
    web = await http_backends(2)
    api = await http_backends(1, prefix="api")
    daemon = await make_daemon(two_pool_config(web, api, weights=[1, 2]))
    host, port = daemon.listener_address("public")
    conn = await Connection.open(host, port)
    seen = [(await conn.request(path="/static/")).json()["backend"] for _ in range(9)]
    await conn.close()
    assert Counter(seen) == {"b1": 3, "b2": 6}
    # interleaved: never more than two of b2 in a row, never two b1 in a row
    joined = "".join("x" if s == "b1" else "y" for s in seen)
    assert "yyy" not in joined and "xx" not in joined


async def test_routes_on_host_and_path_prefix(make_daemon, http_backends) -> None:
    web = await http_backends(1)
    api = await http_backends(1, prefix="api")
    daemon = await make_daemon(two_pool_config(web, api))
    host, port = daemon.listener_address("public")
    r = await fetch(host, port, path="/api/payments", host="shop.example.com")
    assert r.json()["backend"] == "api1"
    r = await fetch(host, port, path="/api/payments", host="SHOP.example.com:8080")
    assert r.json()["backend"] == "api1", "host match is case-insensitive and ignores the port"
    r = await fetch(host, port, path="/other", host="www.example.com")
    assert r.json()["backend"] == "b1", "wildcard host route"
    r = await fetch(host, port, path="/api/payments", host="other.test")
    assert r.status == 404
    assert b"no route" in r.body


async def test_backend_refusing_connection_gets_502(make_daemon) -> None:
    dead = unused_port()
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{dead}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            mode: http
            routes: [{{pool: web}}]
        """
    )
    host, port = daemon.listener_address("public")
    conn = await Connection.open(host, port)
    r = await conn.request(path="/")
    assert r.status == 502
    assert b"refused" in r.body
    # the client connection stays usable after a 502 for a complete request
    r = await conn.request(path="/again")
    assert r.status == 502
    await conn.close()


async def test_connect_failure_fails_over_to_another_backend(make_daemon, http_backends) -> None:
    live = await http_backends(1)
    dead = unused_port()
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{dead}", "127.0.0.1:{live[0]}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """
    )
    host, port = daemon.listener_address("public")
    for _ in range(4):
        r = await fetch(host, port)
        assert r.status == 200 and r.json()["backend"] == "b1"


async def test_keepalive_client_and_pooled_upstream(make_daemon, http_backends) -> None:
    web = await http_backends(1)
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{web[0]}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """
    )
    host, port = daemon.listener_address("public")
    conn = await Connection.open(host, port)
    for i in range(10):
        r = await conn.request(path=f"/n/{i}")
        assert r.status == 200 and r.json()["target"] == f"/n/{i}"
    await conn.close()
    (conns,) = daemon.upstreams.pools.values()
    assert conns.opened_total == 1, "all ten requests reused one upstream connection"
    assert conns.reused_total == 9


async def test_request_bodies_content_length_and_chunked(make_daemon, http_backends) -> None:
    web = await http_backends(1)
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{web[0]}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """
    )
    host, port = daemon.listener_address("public")
    conn = await Connection.open(host, port)
    r = await conn.request("POST", "/cl", body=b"x" * 100_000)
    assert r.json()["body_bytes"] == 100_000
    await conn.send(
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    r = await conn.read_response()
    doc = r.json()
    assert doc["body"] == "hello world"
    names = [n.lower() for n, _ in doc["headers"]]
    assert "transfer-encoding" in names and "content-length" not in names
    await conn.close()


async def test_http10_client(make_daemon, http_backends) -> None:
    web = await http_backends(1)
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{web[0]}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """
    )
    host, port = daemon.listener_address("public")
    conn = await Connection.open(host, port)
    r = await conn.request(path="/old", version="1.0")
    assert r.status == 200 and r.json()["target"] == "/old"
    assert await conn.closed_by_peer(), "HTTP/1.0 without keep-alive is closed after the response"
    await conn.close()
    conn = await Connection.open(host, port)
    r = await conn.request(path="/old", version="1.0", headers={"Connection": "keep-alive"})
    assert r.header("Connection") == "keep-alive"
    r = await conn.request(path="/again", version="1.0", headers={"Connection": "keep-alive"})
    assert r.status == 200
    await conn.close()


async def test_curl_through_the_proxy(make_daemon, http_backends) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is required (installed by .ci/run)")
    web = await http_backends(2)
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{web[0]}", "127.0.0.1:{web[1]}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """
    )
    host, port = daemon.listener_address("public")
    url = f"http://{host}:{port}/curl"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "--max-time", "10", url, url, "-d", "payload", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["backend"] for d in docs] == ["b1", "b2"]
    assert docs[1]["method"] == "POST" and docs[1]["body"] == "payload"


async def test_failover_is_counted_as_a_retry(make_daemon, http_backends) -> None:
    live = await http_backends(1)
    dead = unused_port()
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{dead}", "127.0.0.1:{live[0]}"]
            outlier_detection: false
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """
    )
    host, port = daemon.listener_address("public")
    for _ in range(4):
        assert (await fetch(host, port)).status == 200
    assert daemon.pools["web"].retries_total == 2, "two requests were first sent to the dead backend"

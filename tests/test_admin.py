"""The admin listener: /healthz, /readyz, /status, /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.client import fetch


async def test_admin_endpoints(make_daemon, http_backends) -> None:
    web = await http_backends(2)
    daemon = await make_daemon(
        f"""
        admin:
          bind: 127.0.0.1:0
        pools:
          web:
            backends: ["127.0.0.1:{web[0]}", "127.0.0.1:{web[1]}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """
    )
    assert daemon.admin is not None
    admin = daemon.admin.address
    host, port = daemon.listener_address("public")
    for _ in range(4):
        assert (await fetch(host, port)).status == 200
    assert (await fetch(host, port, path="/", host="")).status in (200, 400)

    r = await fetch(admin.host, admin.port, path="/healthz")
    assert r.status == 200 and r.body == b"ok\n"
    r = await fetch(admin.host, admin.port, path="/readyz")
    assert r.status == 200

    r = await fetch(admin.host, admin.port, path="/metrics")
    assert r.status == 200 and r.header("Content-Type", ).startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.body.decode())}
    requests = families["lbproxy_requests"]
    ok = sum(s.value for s in requests.samples if s.labels.get("code") == "200" and s.name.endswith("_total"))
    assert ok >= 4
    assert {s.labels["backend"] for s in requests.samples if s.labels.get("code") == "200"} == {
        f"127.0.0.1:{web[0]}",
        f"127.0.0.1:{web[1]}",
    }
    assert "lbproxy_connections" in families and "lbproxy_backend_up" in families
    assert "lbproxy_build_info" in families

    r = await fetch(admin.host, admin.port, path="/status")
    status = r.json()
    (pool,) = status["pools"]
    assert pool["name"] == "web" and len(pool["backends"]) == 2
    assert all(b["state"] == "healthy" for b in pool["backends"])
    assert status["listeners"][0]["name"] == "public"

    assert (await fetch(admin.host, admin.port, "POST", "/healthz", body=b"")).status == 405
    assert (await fetch(admin.host, admin.port, path="/nope")).status == 404


async def test_readyz_fails_while_shutting_down(make_daemon) -> None:
    daemon = await make_daemon(
        """
        admin:
          bind: 127.0.0.1:0
        pools:
          web:
            backends: ["127.0.0.1:9"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{pool: web}]
        shutdown_delay: 0.5s
        """
    )
    import asyncio

    assert daemon.admin is not None
    admin = daemon.admin.address
    stopping = asyncio.ensure_future(daemon.shutdown())
    await asyncio.sleep(0.1)
    r = await fetch(admin.host, admin.port, path="/readyz")
    assert r.status == 503
    await stopping

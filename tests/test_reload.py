"""Reload: SIGHUP and POST /reload apply a new config in place, refuse a bad one, drop nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from lbproxy.config.loader import load_config_text
from tests.client import Connection, fetch
from tests.test_cli import _start_process


def config_text(web: list[int], extra_route: str = "", admin: bool = True, strategy: str = "round_robin") -> str:
    backends = ", ".join(f"'127.0.0.1:{p}'" for p in web)
    return (
        ("admin: {bind: '127.0.0.1:0'}\n" if admin else "")
        + f"pools:\n  web:\n    strategy: {strategy}\n    backends: [{backends}]\n"
        + "listeners:\n  - name: public\n    bind: 127.0.0.1:0\n    routes:\n"
        + extra_route
        + "      - {pool: web}\n"
    )


async def test_sighup_applies_a_valid_config_and_refuses_a_bad_one(tmp_path: Path, http_backends) -> None:
    web = await http_backends(2)
    path = tmp_path / "lb.yaml"
    path.write_text(config_text(web[:1]))
    proc, addresses = await _start_process([sys.executable, "-m", "lbproxy", "run", "-c", str(path)])
    assert proc.stderr is not None
    try:
        host, port = addresses["public"]
        conn = await Connection.open(host, port)  # a keep-alive connection that lives across reloads
        assert (await conn.request()).json()["backend"] == "b1"

        path.write_text(config_text(web))
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(10):
            while b"configuration reloaded" not in await proc.stderr.readline():
                pass
        seen = {(await conn.request()).json()["backend"] for _ in range(4)}
        assert seen == {"b1", "b2"}, "the new backend takes traffic on the same client connection"

        path.write_text(config_text(web) + "bogus_key: 1\n")
        proc.send_signal(signal.SIGHUP)
        lines = []
        async with asyncio.timeout(10):
            while True:
                line = (await proc.stderr.readline()).decode()
                lines.append(line)
                if "the running configuration is kept" in line:
                    break
        assert any(f"{path}:11: bogus_key: unknown key 'bogus_key'" in line for line in lines)
        seen = {(await conn.request()).json()["backend"] for _ in range(4)}
        assert seen == {"b1", "b2"}, "the old config keeps running"
        await conn.close()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_reload_under_load_fails_nothing(make_daemon, http_backends, tmp_path: Path) -> None:
    web = await http_backends(3)
    text_a = config_text(web[:2])
    text_b = config_text(web[1:], extra_route="      - {match: {path_prefix: /x/}, pool: web}\n", strategy="least_connections")
    path = tmp_path / "lb.yaml"
    path.write_text(text_a)
    daemon = await make_daemon(text_a)
    daemon.config = load_config_text(text_a, str(path))
    host, port = daemon.listener_address("public")
    stop = asyncio.Event()
    results = {"ok": 0, "failed": 0}

    async def client(keepalive: bool) -> None:
        conn = await Connection.open(host, port) if keepalive else None
        try:
            while not stop.is_set():
                try:
                    if conn is None:
                        r = await fetch(host, port, "POST", "/load", body=b"x" * 1000)
                    else:
                        r = await conn.request("POST", "/load", body=b"x" * 1000)
                    results["ok" if r.status == 200 and r.json()["body_bytes"] == 1000 else "failed"] += 1
                except (ConnectionError, OSError):
                    results["failed"] += 1
        finally:
            if conn is not None:
                await conn.close()

    clients = [asyncio.ensure_future(client(keepalive=i % 2 == 0)) for i in range(6)]
    reloads = 0
    async with asyncio.timeout(30):
        for i in range(12):
            await asyncio.sleep(0.15)
            path.write_text(text_b if i % 2 == 0 else text_a)
            applied, messages = await daemon.reload_from_file(str(path))
            assert applied, messages
            reloads += 1
        stop.set()
        await asyncio.gather(*clients)
    assert results["failed"] == 0, results
    assert results["ok"] > 100
    assert daemon.reloads["success"] == reloads


async def test_reload_removing_a_backend_lets_its_long_download_finish(make_daemon, servers, http_backends) -> None:
    total = 8 * 1024 * 1024

    class SlowDownload(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" not in data:
                return
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
            loop = asyncio.get_running_loop()
            piece = b"d" * (total // 16)
            for i in range(16):
                loop.call_later(0.05 * i, self.transport.write, piece)

    slow = await servers(SlowDownload)
    other = await http_backends(1)
    slow_port = slow.sockets[0].getsockname()[1]
    daemon = await make_daemon(config_text([slow_port]))
    host, port = daemon.listener_address("public")
    conn = await Connection.open(host, port)
    await conn.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.15)
    await daemon.reload(load_config_text(config_text(other), "<new>"))
    assert [b.label for b in daemon.pools["web"].backends] == [f"127.0.0.1:{other[0]}"]
    response = await conn.read_response(timeout=20)
    assert response.status == 200 and len(response.body) == total
    await conn.close()
    assert (await fetch(host, port)).json()["backend"] == "b1"


async def test_backends_that_stay_keep_state_and_counters(make_daemon, http_backends) -> None:
    web = await http_backends(2)
    daemon = await make_daemon(config_text(web))
    host, port = daemon.listener_address("public")
    for _ in range(4):
        await fetch(host, port)
    kept = daemon.pools["web"].by_label[f"127.0.0.1:{web[0]}"]
    kept.set_admin("draining", "test")
    count = kept.connections_total
    await daemon.reload(load_config_text(config_text(web[:1] + web[1:] + [9]), "<new>"))
    assert daemon.pools["web"].by_label[f"127.0.0.1:{web[0]}"] is kept
    assert kept.admin == "draining" and kept.connections_total == count


async def test_listeners_added_and_removed(make_daemon, http_backends) -> None:
    web = await http_backends(1)
    daemon = await make_daemon(config_text(web))
    host, port = daemon.listener_address("public")
    text = config_text(web).replace("- name: public", "- name: second")
    conn = await Connection.open(host, port)
    assert (await conn.request()).status == 200
    await daemon.reload(load_config_text(text, "<new>"))
    assert set(daemon.listeners) == {"second"}
    h2, p2 = daemon.listener_address("second")
    assert (await fetch(h2, p2)).status == 200
    assert await conn.closed_by_peer(), "the removed listener closes its idle keep-alive connections"
    await conn.close()
    with pytest.raises(OSError):
        await fetch(host, port)


async def test_post_reload_on_admin(make_daemon, http_backends, tmp_path: Path) -> None:
    web = await http_backends(2)
    path = tmp_path / "lb.yaml"
    path.write_text(config_text(web[:1]))
    daemon = await make_daemon(config_text(web[:1]))
    daemon.config = load_config_text(config_text(web[:1]), str(path))
    assert daemon.admin is not None
    admin = daemon.admin.address
    path.write_text(config_text(web))
    r = await fetch(admin.host, admin.port, "POST", "/reload", body=b"")
    assert r.status == 200 and r.json()["applied"] is True
    assert len(daemon.pools["web"].backends) == 2
    path.write_text("pools: {}\n")
    r = await fetch(admin.host, admin.port, "POST", "/reload", body=b"")
    assert r.status == 400 and r.json()["applied"] is False and r.json()["messages"]
    assert len(daemon.pools["web"].backends) == 2
    metrics = (await fetch(admin.host, admin.port, path="/metrics")).body.decode()
    assert 'lbproxy_config_reloads_total{result="success"} 1.0' in metrics
    assert 'lbproxy_config_reloads_total{result="failure"} 1.0' in metrics

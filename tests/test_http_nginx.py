"""lbproxy in front of a real nginx (installed by .ci/run): static files, HEAD, 304, ranges,
chunked and Content-Length uploads (nginx's WebDAV PUT writes them to disk, so the bytes are
checked exactly), forwarding headers, keep-alive reuse, and nginx closing idle connections."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.backends_misbehaving import proxy_config, read_until
from tests.client import Connection
from tests.conftest import unused_port

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_timeout {keepalive}s;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        location = /echo {{
            default_type text/plain;
            return 200 "xff=$http_x_forwarded_for|proto=$http_x_forwarded_proto|host=$http_host|xfh=$http_x_forwarded_host|rid=$http_x_request_id|conn=$http_connection|te=$http_te|hop=$http_x_hop|expect=$http_expect\\n";
        }}
        location /dav/ {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            client_max_body_size 0;
        }}
    }}
}}
"""


async def _started(proc: asyncio.subprocess.Process, port: int, timeout: float = 10.0) -> bool:
    """True once nginx (still running) accepts on ``port``; False if it exited (port taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
        except OSError:
            await asyncio.sleep(0.05)
            continue
        await asyncio.sleep(0.1)
        if proc.returncode is None:
            return True
        return False
    proc.kill()
    await proc.wait()
    return False


@pytest.fixture
async def nginx(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A foreground nginx on a free loopback port: (port, document root)."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        pytest.fail("nginx is required (installed by .ci/run)")
    www = tmp_path / "www"
    (www / "dav").mkdir(parents=True)
    conf = tmp_path / "nginx.conf"
    for _attempt in range(3):  # the free port can be taken before nginx binds it: try another
        port = unused_port()
        conf.write_text(NGINX_CONF.format(tmp=tmp_path, port=port, keepalive=1))
        proc = await asyncio.create_subprocess_exec(
            binary, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log"),
            "-g", "daemon off; master_process off;",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if await _started(proc, port):
            break
    else:
        err = (tmp_path / "error.log").read_text() if (tmp_path / "error.log").exists() else ""
        raise AssertionError(f"nginx did not start: {err}")
    try:
        yield port, www
    finally:
        if proc.returncode is None:
            proc.kill()
        async with asyncio.timeout(10):
            await proc.wait()


async def curl(*args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "30", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, err
    return out


async def test_static_files_head_304_and_ranges_through_lbproxy(make_daemon, nginx) -> None:
    port, www = nginx
    content = os.urandom(3 * 1024 * 1024 + 17)
    (www / "file.bin").write_bytes(content)
    daemon = await make_daemon(proxy_config([port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(path="/file.bin")
    assert r.status == 200 and r.body == content
    etag = r.header("ETag")
    assert etag
    r = await conn.request("HEAD", "/file.bin")
    assert r.status == 200 and r.header("Content-Length") == str(len(content))
    r = await conn.request(path="/file.bin", headers={"If-None-Match": etag})
    assert r.status == 304 and r.body == b""
    r = await conn.request(path="/file.bin", headers={"Range": "bytes=10-19"})
    assert r.status == 206 and r.body == content[10:20]
    r = await conn.request(path="/missing")
    assert r.status == 404 and b"nginx" in r.body
    # all of that over one client connection and one upstream connection: the framing held
    r = await conn.request(path="/file.bin")
    assert r.body == content
    await conn.close()
    (pool,) = daemon.upstreams.pools.values()
    assert pool.opened_total == 1


async def test_uploads_chunked_and_sized_arrive_intact(make_daemon, nginx, tmp_path) -> None:
    port, www = nginx
    daemon = await make_daemon(proxy_config([port]))
    host, lport = daemon.listener_address("public")
    payload = os.urandom(5 * 1024 * 1024 + 3)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    # chunked (curl -T - reads stdin of unknown length), with Expect: 100-continue
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "30", "--expect100-timeout", "10", "-H", "Expect: 100-continue",
        "-T", "-", "-o", "/dev/null", "-w", "%{http_code}", f"http://{host}:{lport}/dav/chunked.bin",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    started = time.monotonic()
    out, err = await asyncio.wait_for(proc.communicate(payload), 40)
    assert proc.returncode == 0 and out == b"201", err
    assert time.monotonic() - started < 5, "no stall waiting for 100 Continue"
    # Content-Length
    out = await curl("-T", str(source), "-o", "/dev/null", "-w", "%{http_code}", f"http://{host}:{lport}/dav/sized.bin")
    assert out == b"201"
    for name in ("chunked.bin", "sized.bin"):
        stored = (www / "dav" / name).read_bytes()
        assert hashlib.sha256(stored).digest() == hashlib.sha256(payload).digest(), name
    body = await curl(f"http://{host}:{lport}/dav/chunked.bin")
    assert body == payload


async def test_forwarding_and_hop_by_hop_headers_seen_by_nginx(make_daemon, nginx) -> None:
    port, _ = nginx
    daemon = await make_daemon(proxy_config([port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    r = await conn.request(
        path="/echo", host="shop.example",
        headers={"Connection": "keep-alive, X-Hop", "X-Hop": "secret", "TE": "trailers",
                 "X-Forwarded-For": "6.6.6.6", "X-Request-Id": "req-42"},
    )
    await conn.close()
    fields = dict(part.split("=", 1) for part in r.body.decode().strip().split("|"))
    assert fields == {
        "xff": "127.0.0.1", "proto": "http", "host": "shop.example", "xfh": "shop.example",
        "rid": "req-42", "conn": "", "te": "", "hop": "", "expect": "",
    }
    assert r.header("X-Request-Id") == "req-42"


async def test_nginx_closing_idle_keepalive_connections_is_handled(make_daemon, nginx) -> None:
    port, www = nginx
    (www / "a.txt").write_bytes(b"alpha")
    daemon = await make_daemon(proxy_config([port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    for _ in range(20):
        assert (await conn.request(path="/a.txt")).body == b"alpha"
    (pool,) = daemon.upstreams.pools.values()
    assert pool.opened_total == 1 and pool.reused_total == 19
    await asyncio.sleep(1.5)  # nginx's keepalive_timeout is 1 s: it closes the idle connection
    for _ in range(3):
        r = await conn.request(path="/a.txt")
        assert r.status == 200 and r.body == b"alpha"
    assert pool.opened_total == 2
    await conn.close()


async def test_pipelined_requests_to_nginx(make_daemon, nginx) -> None:
    port, www = nginx
    for i in range(5):
        (www / f"{i}.txt").write_bytes(b"file %d" % i)
    daemon = await make_daemon(proxy_config([port]))
    conn = await Connection.open(*daemon.listener_address("public"))
    await conn.send(b"".join(b"GET /%d.txt HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5)))
    data = await read_until(conn.reader, b"file 4")
    await conn.close()
    assert [int(chunk[:1]) for chunk in data.split(b"file ")[1:]] == [0, 1, 2, 3, 4]

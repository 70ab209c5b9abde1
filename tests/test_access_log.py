"""Access logs: json and combined lines per request; SIGUSR1 reopens the file (logrotate)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

from tests.client import fetch
from tests.conftest import ROOT
from tests.test_cli import _start_process


def _logging_config(access_log: str, port: int, routes: str) -> str:
    """One pool of the backend on ``port``, one listener ``public`` with ``routes``, and the
    ``access_log`` section given (YAML flow text)."""
    return f"""
        access_log: {access_log}
        pools:
          web:
            backends: ["127.0.0.1:{port}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: {routes}
        """


async def test_json_access_log_fields(make_daemon, http_backends, tmp_path: Path) -> None:
    web = await http_backends(1)
    path = tmp_path / "access.log"
    daemon = await make_daemon(
        _logging_config(f'{{format: json, path: "{path}"}}', web[0], "[{name: api, match: {path_prefix: /api/}, pool: web}]")
    )
    host, port = daemon.listener_address("public")
    r = await fetch(host, port, path="/api/x?q=1", headers={"User-Agent": "probe/1", "X-Request-Id": "req-42"})
    assert r.status == 200
    assert (await fetch(host, port, path="/nowhere")).status == 404
    await daemon.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["method"] == "GET" and first["target"] == "/api/x?q=1" and first["status"] == 200
    assert first["client"] == "127.0.0.1" and first["route"] == "api" and first["pool"] == "web"
    assert first["backend"] == f"127.0.0.1:{web[0]}" and first["request_id"] == "req-42"
    assert first["user_agent"] == "probe/1" and first["bytes_out"] == len(r.body)
    assert first["duration"] >= 0 and first["listener"] == "public"
    assert second["status"] == 404 and second["route"] is None


async def test_combined_access_log_and_sigusr1_reopen(tmp_path: Path, http_backends) -> None:
    web = await http_backends(1)
    log_path = tmp_path / "access.log"
    config = tmp_path / "lb.yaml"
    config.write_text(
        f"access_log: {{path: '{log_path}'}}\n"
        f"pools:\n  web:\n    backends: ['127.0.0.1:{web[0]}']\n"
        "listeners:\n  - name: public\n    bind: 127.0.0.1:0\n    routes: [{pool: web}]\n"
    )
    proc, addresses = await _start_process([sys.executable, "-m", "lbproxy", "run", "-c", str(config)])
    try:
        host, port = addresses["public"]
        assert (await fetch(host, port, path="/before")).status == 200
        rotated = tmp_path / "access.log.1"
        async with asyncio.timeout(5):
            while not log_path.exists() or b"/before" not in log_path.read_bytes():
                await asyncio.sleep(0.1)  # flushed within a second
        os.rename(log_path, rotated)
        proc.send_signal(signal.SIGUSR1)
        async with asyncio.timeout(5):
            while not log_path.exists():
                await asyncio.sleep(0.05)
        assert (await fetch(host, port, path="/after")).status == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
        old = rotated.read_text()
        new = log_path.read_text()
        assert "/before" in old and "/after" not in old
        assert "/after" in new
        pattern = (
            r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /after HTTP/1\.1" 200 \d+ "-" "-" '
            r"rt=\d+\.\d+ listener=public route=route0 pool=web backend=127\.0\.0\.1:\d+ id=\S+ term=-$"
        )
        assert re.match(pattern, new.strip()), new
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.stderr.read()  # type: ignore[union-attr]
    _ = ROOT


async def test_combined_line_escapes_client_text_and_marks_absent_fields(make_daemon, http_backends, tmp_path: Path) -> None:
    """Referer and User-Agent are escaped so one request stays one line; absent ones are "-"."""
    web = await http_backends(1)
    path = tmp_path / "access.log"
    daemon = await make_daemon(_logging_config(f'{{path: "{path}"}}', web[0], "[{pool: web}]"))
    host, port = daemon.listener_address("public")
    assert (await fetch(host, port, path="/a", headers={"Referer": 'x"y\\z', "user-agent": "ua/1"})).status == 200
    assert (await fetch(host, port, path="/b")).status == 200
    await daemon.shutdown()
    first, second = path.read_text().splitlines()
    assert '"GET /a HTTP/1.1" 200 ' in first and ' "x\\"y\\\\z" "ua/1" rt=' in first, first
    assert '"GET /b HTTP/1.1" 200 ' in second and ' "-" "-" rt=' in second, second

"""Observability with real peers: promtool lints /metrics; headless Chromium renders the dashboard."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.client import fetch

REQUIRED_FAMILIES = {
    "lbproxy_connections": ["listener"],
    "lbproxy_connections_active": ["listener"],
    "lbproxy_requests": ["listener", "route", "pool", "backend", "code"],
    "lbproxy_request_duration_seconds": ["listener", "pool"],
    "lbproxy_upstream_connect_duration_seconds": ["pool"],
    "lbproxy_bytes": ["listener", "direction"],
    "lbproxy_backend_up": ["pool", "backend"],
    "lbproxy_backend_state": ["pool", "backend", "state"],
    "lbproxy_backend_active_connections": ["pool", "backend"],
    "lbproxy_backend_weight": ["pool", "backend"],
    "lbproxy_health_checks": ["pool", "backend", "result"],
    "lbproxy_backend_transitions": ["pool", "backend", "to"],
    "lbproxy_upstream_errors": ["pool", "backend", "kind"],
    "lbproxy_retries": ["pool"],
    "lbproxy_config_reloads": ["result"],
    "lbproxy_config_last_reload_success_timestamp_seconds": [],
    "lbproxy_build_info": ["version", "python", "build"],
}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is required (installed by .ci/run)")
    return path


async def busy_daemon(make_daemon, restartable, tcp_backends):
    backends = await restartable(2)
    echo = await tcp_backends(1)
    daemon = await make_daemon(
        f"""
        admin: {{bind: "127.0.0.1:0"}}
        pools:
          web:
            backends: ["{backends[0].address}", "{backends[1].address}", "127.0.0.1:9"]
            health_check: {{type: http, interval: 0.1, timeout: 0.2}}
          echo:
            backends: ["127.0.0.1:{echo[0]}"]
          dead:
            backends: ["127.0.0.1:9"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes:
              - {{name: dead, match: {{path_prefix: /dead}}, pool: dead}}
              - {{name: all, pool: web}}
          - name: raw
            bind: 127.0.0.1:0
            mode: tcp
            pool: echo
        """
    )
    host, port = daemon.listener_address("public")
    for _ in range(6):
        await fetch(host, port)
    assert (await fetch(host, port, path="/dead")).status == 502
    h, p = daemon.listener_address("raw")
    reader, writer = await asyncio.open_connection(h, p)
    async with asyncio.timeout(5):
        await reader.readline()
    writer.close()
    async with asyncio.timeout(5):
        while daemon.pools["web"].backends[2].available:
            await asyncio.sleep(0.05)
    return daemon


async def test_metrics_pass_promtool_and_have_the_documented_families(make_daemon, restartable, tcp_backends) -> None:
    promtool = require("promtool")
    daemon = await busy_daemon(make_daemon, restartable, tcp_backends)
    admin = daemon.admin.address
    body = (await fetch(admin.host, admin.port, path="/metrics")).body
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(body), 30)
    assert proc.returncode == 0, (out + err).decode()
    assert not (out + err).strip(), f"promtool lint findings: {(out + err).decode()}"
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name, labels in REQUIRED_FAMILIES.items():
        assert name in families, name
        samples = [s for s in families[name].samples if not s.name.endswith(("_created",))]
        assert samples, f"{name} has no samples"
        for sample in samples:
            wanted = set(labels) | ({"le"} if sample.name.endswith("_bucket") else set())
            assert set(sample.labels) == wanted, (name, sample.labels)
    # bounded label values: no client address or raw path anywhere
    assert "127.0.0.1:" not in "".join(s.labels.get("listener", "") for f in families.values() for s in f.samples)
    kinds = {s.labels["kind"] for s in families["lbproxy_upstream_errors"].samples}
    assert "no_backend" in kinds and "connect_refused" in kinds


async def test_dashboard_in_headless_chromium(make_daemon, restartable, tcp_backends, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is required (installed by .ci/run)")
    daemon = await busy_daemon(make_daemon, restartable, tcp_backends)
    admin = daemon.admin.address
    page = await fetch(admin.host, admin.port, path="/")
    assert page.status == 200 and page.header("Content-Type").startswith("text/html")
    assert b"<script" in page.body and b"src=" not in page.body and b"href=\"http" not in page.body, "self-contained"
    url = f"http://{admin.host}:{admin.port}/"
    common = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        chromium, *common, "--dump-dom", url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    dom, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = dom.decode()
    for backend in daemon.pools["web"].backends:
        assert f'data-backend="{backend.label}"' in text, backend.label
    assert 'class="state unhealthy"' in text and 'class="state healthy"' in text
    assert ">drain</button>" in text and "Pool web" in text and "Pool echo" in text
    shot = tmp_path / "dashboard.png"
    proc = await asyncio.create_subprocess_exec(
        chromium, *common, "--window-size=1280,720", f"--screenshot={shot}", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await asyncio.wait_for(proc.communicate(), 60)
    assert shot.exists() and shot.stat().st_size > 5000

"""The command line, run as a real process: check, run (with signals), demo, --version."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client import Connection, fetch
from tests.conftest import ROOT

LBPROXY = [sys.executable, "-m", "lbproxy"]
LISTENING = re.compile(r"listener (\S+) \((\w+)\) on (\S+):(\d+)")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LBPROXY, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert re.fullmatch(r"lbproxy \d+\.\d+\.\d+ \((python|mypyc) build\)\n", out.stdout)


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "lbproxy"
    assert exe.exists(), "pip install . provides the lbproxy console script"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("lbproxy ")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_check_accepts_every_example_config(name: str) -> None:
    out = run_cli("check", "-c", str(ROOT / "config" / name))
    assert out.returncode == 0, out.stderr
    assert ": OK: " in out.stdout and out.stdout.count("\n") == 1


def test_check_reports_every_error_with_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "pools:\n"
        "  web:\n"
        "    strtegy: round_robin\n"
        "    backends:\n"
        "      - address: 127.0.0.1:99999\n"
        "listeners:\n"
        "  - name: public\n"
        "    bind: 127.0.0.1:8080\n"
        "    mode: http\n"
        "    routes:\n"
        "      - pool: wbe\n"
    )
    out = run_cli("check", "-c", str(bad))
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert f"{bad}:3: pools.web.strtegy: unknown key 'strtegy' (did you mean 'strategy'?)" in lines
    assert any(line.startswith(f"{bad}:5: pools.web.backends[0].address:") and "out of range" in line for line in lines)
    assert any(line.startswith(f"{bad}:11: listeners[0].routes[0].pool:") and "'web'" in line for line in lines)


def test_check_yaml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "syntax.yaml"
    bad.write_text("pools:\n  web: [unclosed\n")
    out = run_cli("check", "-c", str(bad))
    assert out.returncode == 1
    assert re.search(rf"^{re.escape(str(bad))}:\d+: yaml: ", out.stderr, re.M)


def test_check_missing_file(tmp_path: Path) -> None:
    out = run_cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert out.returncode == 1
    assert "nope.yaml" in out.stderr


def test_run_refuses_invalid_config_with_the_same_messages(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: {}\nlisteners:\n  - name: x\n    bind: 127.0.0.1:0\n    mode: tcp\n    pool: missing\n")
    checked = run_cli("check", "-c", str(bad))
    ran = run_cli("run", "-c", str(bad))
    assert ran.returncode == 1 and checked.returncode == 1
    problems = [l for l in checked.stderr.splitlines() if l.startswith(str(bad) + ":")]
    assert problems and all(p in ran.stderr for p in problems)


async def _start_process(args: list[str]) -> tuple[asyncio.subprocess.Process, dict[str, tuple[str, int]]]:
    """Start lbproxy and wait until it logs its listeners; returns their addresses by name."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    addresses: dict[str, tuple[str, int]] = {}
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError("lbproxy exited before it was running")
            match = LISTENING.search(line)
            if match:
                addresses[match.group(1)] = (match.group(3), int(match.group(4)))
            if "running:" in line:
                return proc, addresses


async def _drain_stderr(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    return (await proc.stderr.read()).decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_drains_in_flight_requests_on_signal(tmp_path: Path, servers, sig: signal.Signals) -> None:
    class SlowBackend(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                asyncio.get_running_loop().call_later(
                    0.7, self.transport.write, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
                )

    server = await servers(SlowBackend)
    backend_port = server.sockets[0].getsockname()[1]
    config = tmp_path / "lb.yaml"
    config.write_text(
        f"pools:\n  web:\n    backends: ['127.0.0.1:{backend_port}']\n"
        "listeners:\n  - name: public\n    bind: 127.0.0.1:0\n    mode: http\n    routes: [{pool: web}]\n"
        "drain_timeout: 10s\n"
    )
    proc, addresses = await _start_process([*LBPROXY, "run", "-c", str(config)])
    stderr_task = asyncio.ensure_future(_drain_stderr(proc))
    try:
        host, port = addresses["public"]
        conn = await Connection.open(host, port)
        await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.2)  # the request is in flight at the backend
        proc.send_signal(sig)
        response = await conn.read_response()
        assert response.status == 200 and response.body == b"slow"
        assert response.header("Connection") == "close", "a draining daemon closes keep-alive connections"
        await conn.close()
        async with asyncio.timeout(15):
            code = await proc.wait()
        assert code == 0
        with pytest.raises(OSError):
            await fetch(host, port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await stderr_task


async def test_demo_starts_and_rotates() -> None:
    from tests.conftest import unused_port

    ports = [unused_port() for _ in range(3)]
    proc = await asyncio.create_subprocess_exec(
        *LBPROXY, "demo", "--http-port", str(ports[0]), "--tcp-port", str(ports[1]), "--admin-port", str(ports[2]),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = ""
        async with asyncio.timeout(20):
            while "/metrics | grep" not in banner:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError("demo exited: " + (await proc.stderr.read()).decode())  # type: ignore[union-attr]
                banner += line
        assert f"127.0.0.1:{ports[0]}" in banner and "curl" in banner and "nc" in banner
        seen = [(await fetch("127.0.0.1", ports[0], path="/hello")).json()["backend"] for _ in range(3)]
        assert sorted(seen) == ["web-1", "web-2", "web-3"]
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[1])
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"hello from echo-")
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
        writer.close()
        metrics = await fetch("127.0.0.1", ports[2], path="/metrics")
        assert b'lbproxy_requests_total{' in metrics.body
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_python_dash_m_and_env() -> None:
    out = subprocess.run([sys.executable, "-m", "lbproxy", "--help"], capture_output=True, text=True, timeout=30,
                         env={**os.environ})  # fmt: skip
    assert out.returncode == 0
    for command in ("run", "check", "demo"):
        assert command in out.stdout

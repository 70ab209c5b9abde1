"""Large bodies stream through with bounded memory: the daemon runs as its own process
(``python -m lbproxy run -c FILE``) and its resident memory (VmRSS) is sampled while curl uploads
and downloads a large body through it.

Each side is slower than the other (the backend reads the upload at a limited rate, curl reads
the download at a limited rate), so a proxy without flow control would buffer hundreds of MiB.
``LBPROXY_BIG_MIB`` sets the size (default 1024: 1 GiB each way, about 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.backends_misbehaving import BulkBackend
from tests.conftest import ROOT

SIZE = int(os.environ.get("LBPROXY_BIG_MIB", "1024")) * 1024 * 1024
RATE = 300 * 1024 * 1024  # bytes/s of the slow side
MAX_GROWTH = 16 * 1024 * 1024  # bytes of RSS growth allowed during a transfer


def rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


LISTENING = re.compile(rb"listener public \(http\) on 127\.0\.0\.1:(\d+)")


async def bound_port(stderr: asyncio.StreamReader, timeout: float = 15.0) -> int:
    """The port the daemon logs for listener ``public`` (it binds port 0: no port races)."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            line = await stderr.readline()
            if not line:
                raise AssertionError(b"lbproxy exited:\n" + b"".join(seen))
            seen.append(line)
            if (match := LISTENING.search(line)) is not None:
                return int(match.group(1))


async def drain(stderr: asyncio.StreamReader) -> None:
    """Keep reading the daemon's log so its pipe never fills."""
    while await stderr.readline():
        pass


@pytest.fixture
async def daemon_process(tmp_path: Path) -> AsyncIterator[tuple[int, int, BulkBackend]]:
    """(daemon pid, listener port, backend) with lbproxy as a separate process."""
    if shutil.which("curl") is None:
        pytest.fail("curl is required (installed by .ci/run)")
    backend = BulkBackend(read_rate=RATE)
    backend_port = await backend.start()
    config = {
        "pools": {"bulk": {"backends": [f"127.0.0.1:{backend_port}"]}},
        "listeners": [{"name": "public", "bind": "127.0.0.1:0", "routes": [{"pool": "bulk"}]}],
        "drain_timeout": 1,
    }
    path = tmp_path / "lbproxy.yaml"
    path.write_text(json.dumps(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lbproxy", "run", "-c", str(path), "--log-level", "info",
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    log_reader: asyncio.Future[None] | None = None
    try:
        port = await bound_port(proc.stderr)
        log_reader = asyncio.ensure_future(drain(proc.stderr))
        yield proc.pid, port, backend
    finally:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if log_reader is not None:
            log_reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await log_reader
        backend.close()


async def sampled(pid: int, command: str) -> tuple[bytes, int, float]:
    """Run a shell ``command`` while sampling the RSS of ``pid``: (stdout, peak RSS, seconds)."""
    peak = rss(pid)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.PIPE)
    communicate = asyncio.ensure_future(proc.communicate())
    async with asyncio.timeout(120):
        while not communicate.done():
            peak = max(peak, rss(pid))
            await asyncio.wait([communicate], timeout=0.02)
    out, _ = communicate.result()
    assert proc.returncode == 0, command
    return out, max(peak, rss(pid)), time.monotonic() - started


async def test_large_upload_and_download_stream_with_bounded_memory(daemon_process) -> None:
    pid, port, backend = daemon_process
    url = f"http://127.0.0.1:{port}"
    # warm up: one small transfer each way, so the baseline includes the steady-state buffers
    await sampled(pid, f"head -c 1048576 /dev/zero | curl -sS -T - {url}/warm -o /dev/null")
    await sampled(pid, f"curl -sS -o /dev/null {url}/bytes/1048576")
    baseline = rss(pid)
    received_before = backend.received
    backend.received, backend.started = 0, time.monotonic()  # the rate budget starts now
    received_before = 0

    out, peak_up, up_seconds = await sampled(
        pid, f"head -c {SIZE} /dev/zero | curl -sS -T - -H 'Expect:' {url}/upload"
    )
    assert backend.received - received_before == SIZE, "the whole chunked upload reached the backend"
    out, peak_down, down_seconds = await sampled(
        pid, f"curl -sS --limit-rate {RATE} -o /dev/null -w '%{{size_download}}' {url}/bytes/{SIZE}"
    )
    assert int(out) == SIZE
    growth_up, growth_down = peak_up - baseline, peak_down - baseline
    print(
        f"\n{SIZE >> 20} MiB: upload {up_seconds:.1f}s, RSS +{growth_up / 2**20:.1f} MiB; "
        f"download {down_seconds:.1f}s, RSS +{growth_down / 2**20:.1f} MiB (baseline {baseline / 2**20:.1f} MiB)"
    )
    assert growth_up < MAX_GROWTH, f"upload grew the daemon by {growth_up / 2**20:.1f} MiB"
    assert growth_down < MAX_GROWTH, f"download grew the daemon by {growth_down / 2**20:.1f} MiB"

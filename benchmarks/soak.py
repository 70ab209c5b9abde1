"""Soak benchmark (issue 10, "Long runs"): lbproxy under hours-like mixed load, faults included.

Not a test: it measures whether lbproxy's memory and file descriptors stay flat over millions of
requests while clients misbehave, backends restart and the config is reloaded.

- Three nginx backends (``configs/backend-nginx.conf`` as ``run.py``; ``backend.py`` without nginx).
- lbproxy as a subprocess (``python -m lbproxy run -c CONFIG``): an ``http`` listener with a few
  routes, an active http health check, the admin listener.
- Load, all at once until ``--requests`` are done or ``--minutes`` pass:
  - keep-alive: ``wrk -t1`` in back-to-back slices of ``--slice`` seconds (``--wrk-connections``);
  - a client process (asyncio) with new-connection-per-request clients (``Connection: close``),
    keep-alive clients that timestamp every failure, and aborting clients: raw sockets closed
    (RST) mid-request (half a request head sent) and mid-response (a few bytes of /64k read).
- Faults: every ``--restart-every`` s one backend (in turn) is stopped and started 1 s later;
  every ``--reload-every`` s lbproxy gets SIGHUP after its config file was swapped for the other
  of two valid configs (routes, strategy and timeouts differ).
- Every second: lbproxy's VmRSS and open fds (``/proc/PID``).

Failures are counted as **undeliberate** unless caused by a deliberate fault: the aborting clients'
own connections are never counted; a failure within a restart window (backend stop until 2 s after
its start) counts as **deliberate (restart)**. For wrk, which reports totals only, a slice that
overlaps a restart window has its errors counted as deliberate (restart); the client process
classifies each failure by its timestamp.

Output: ``results/soak-DATE.json``, ``results/soak-DATE.png`` (copied to ``docs/soak.png``), and a
summary on stdout.

    python benchmarks/soak.py                          # 2,000,000 requests, at most 10 minutes
    python benchmarks/soak.py --requests 1500000 --minutes 8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402  (benchmarks/run.py helpers)
    HERE, HOST_HEADER, REPORT_LUA, ROOT, BenchError, Managed, free_ports, render, wait_port,
)

RESULTS = HERE / "results"
DOCS = ROOT / "docs"
RESTART_GRACE = 2.0  # s after a restarted backend is started again that failures still count to it

CONFIG = """\
# soak config ${variant}
admin:
  bind: 127.0.0.1:${admin_port}
drain_timeout: 2s
pools:
  web:
    strategy: ${strategy}
    health_check: {type: http, path: /, interval: 1s}
    backends:
      - 127.0.0.1:${b1}
      - 127.0.0.1:${b2}
      - 127.0.0.1:${b3}
  api:
    strategy: least_connections
    backends:
      - 127.0.0.1:${b1}
      - 127.0.0.1:${b2}
      - 127.0.0.1:${b3}
listeners:
  - name: public
    bind: 127.0.0.1:${http_port}
    mode: http
    max_connections: 5000
    backlog: 4096
    routes:
      - name: api
        match: {host: api.example.com, path_prefix: /api/}
        pool: api
      - name: ${extra_route}
        match: {path_prefix: /${extra_route}/}
        pool: api
      - name: bench
        match: {host: bench.example.com, path_prefix: /}
        pool: web
    limits:
      keepalive_timeout: ${keepalive}
"""


def write_config(path: Path, variant: str, ports: dict[str, int]) -> None:
    import string

    values = dict(admin_port=ports["admin"], b1=ports["backend1"], b2=ports["backend2"],
                  b3=ports["backend3"], http_port=ports["http"], variant=variant)
    if variant == "A":
        values.update(strategy="round_robin", extra_route="internal", keepalive="60s")
    else:
        values.update(strategy="least_connections", extra_route="private", keepalive="90s")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(string.Template(CONFIG).substitute({k: str(v) for k, v in values.items()}))
    os.replace(tmp, path)


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------------------------
# client process: new-connection, keep-alive and aborting clients (asyncio)

REQ_CLOSE = (f"GET / HTTP/1.1\r\nHost: {HOST_HEADER}\r\nConnection: close\r\n\r\n").encode()
REQ_KA = (f"GET / HTTP/1.1\r\nHost: {HOST_HEADER}\r\n\r\n").encode()
REQ_64K = (f"GET /64k HTTP/1.1\r\nHost: {HOST_HEADER}\r\n\r\n").encode()


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


class Stats:
    def __init__(self) -> None:
        self.ok = {"newconn": 0, "keepalive": 0}
        self.failures: list[tuple[float, str, str]] = []  # (time, kind, what)
        self.aborts = {"mid_request": 0, "mid_response": 0, "abort_errors": 0}

    def fail(self, kind: str, what: str) -> None:
        self.failures.append((time.time(), kind, what[:80]))


async def newconn_client(port: int, stats: Stats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(REQ_CLOSE)
            status = await asyncio.wait_for(read_response(reader), 10)
            if status == 200:
                stats.ok["newconn"] += 1
            else:
                stats.fail("newconn", f"status {status}")
        except Exception as exc:  # noqa: BLE001
            stats.fail("newconn", repr(exc))
            await asyncio.sleep(0.01)
        finally:
            if writer is not None:
                writer.close()


async def keepalive_client(port: int, stats: Stats, stop: asyncio.Event) -> None:
    writer = None
    while not stop.is_set():
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(REQ_KA)
            status = await asyncio.wait_for(read_response(reader), 10)
            if status == 200:
                stats.ok["keepalive"] += 1
            else:
                stats.fail("keepalive", f"status {status}")
        except Exception as exc:  # noqa: BLE001
            stats.fail("keepalive", repr(exc))
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def rst_close(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def abort_client(port: int, stats: Stats, stop: asyncio.Event, pause: float) -> None:
    loop = asyncio.get_running_loop()
    n = 0
    while not stop.is_set():
        n += 1
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 5)
            if n % 2:  # mid-request: half a request head, then RST (or FIN every 4th)
                await loop.sock_sendall(sock, REQ_KA[: len(REQ_KA) // 2])
                await asyncio.sleep(random.uniform(0, 0.02))
                stats.aborts["mid_request"] += 1
            else:  # mid-response: ask for 64 KiB, read a little, RST
                await loop.sock_sendall(sock, REQ_64K)
                await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
                stats.aborts["mid_response"] += 1
        except Exception:  # noqa: BLE001  (deliberate: never a failure)
            stats.aborts["abort_errors"] += 1
        finally:
            if n % 4 == 1:
                sock.close()
            else:
                rst_close(sock)
        await asyncio.sleep(pause)


async def client_main(args: argparse.Namespace) -> None:
    stats = Stats()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(newconn_client(args.port, stats, stop)) for _ in range(args.newconn)]
    tasks += [asyncio.create_task(keepalive_client(args.port, stats, stop)) for _ in range(args.keepalive)]
    tasks += [asyncio.create_task(abort_client(args.port, stats, stop, 0.005)) for _ in range(args.aborters)]
    status_path = Path(args.status)
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1)
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ok": stats.ok, "aborts": stats.aborts, "failures": stats.failures}))
        os.replace(tmp, status_path)
    await asyncio.wait(tasks, timeout=12)
    tmp = status_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"ok": stats.ok, "aborts": stats.aborts, "failures": stats.failures,
                               "final": True}))
    os.replace(tmp, status_path)


def run_client(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int)
    p.add_argument("--status")
    p.add_argument("--newconn", type=int, default=4)
    p.add_argument("--keepalive", type=int, default=4)
    p.add_argument("--aborters", type=int, default=2)
    args = p.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(client_main(args))


# --------------------------------------------------------------------------------------------
# driver


def parse_wrk(text: str) -> dict[str, Any] | None:
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    return None


def in_windows(t: float, windows: list[tuple[float, float]]) -> bool:
    return any(a <= t <= b for a, b in windows)


def plot(samples: list[dict[str, Any]], events: list[dict[str, Any]], warm_t: float, path: Path,
         title: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no chart"
    t = [s["t"] for s in samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    ax1.plot(t, [s["rss_kib"] / 1024 for s in samples], color="tab:blue", lw=1.2)
    ax1.set_ylabel("lbproxy RSS (MiB)")
    ax2.plot(t, [s["fds"] for s in samples], color="tab:green", lw=1.0)
    ax2.set_ylabel("open fds")
    ax2.set_xlabel("seconds")
    for ax in (ax1, ax2):
        ax.axvline(warm_t, color="grey", ls=":", lw=1)
        for e in events:
            if e["kind"] == "reload":
                ax.axvline(e["t"], color="tab:orange", lw=0.7, alpha=0.6)
            elif e["kind"] == "backend_stop":
                ax.axvline(e["t"], color="tab:red", lw=0.7, alpha=0.6, ls="--")
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D
    ax1.legend(handles=[Line2D([], [], color="tab:orange", lw=1, label="reload (SIGHUP)"),
                        Line2D([], [], color="tab:red", lw=1, ls="--", label="backend restart"),
                        Line2D([], [], color="grey", ls=":", label="end of warm-up")],
               loc="lower right", fontsize=8)
    ax1.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2_000_000, help="stop after this many requests")
    p.add_argument("--minutes", type=float, default=10.0, help="stop after this long at most")
    p.add_argument("--warmup", type=float, default=30.0, help="s; RSS growth is measured from here")
    p.add_argument("--slice", type=float, default=5.0, help="s per wrk run (back to back)")
    p.add_argument("--wrk-connections", type=int, default=40)
    p.add_argument("--newconn", type=int, default=4, help="new-connection-per-request clients")
    p.add_argument("--keepalive", type=int, default=4, help="keep-alive asyncio clients")
    p.add_argument("--aborters", type=int, default=2, help="aborting clients")
    p.add_argument("--restart-every", type=float, default=20.0)
    p.add_argument("--reload-every", type=float, default=15.0)
    p.add_argument("--port-base", type=int, default=23000)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required (apt-get install wrk)")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = Path(tempfile.mkdtemp(prefix="lbproxy-soak-"))
    logs = scratch / "logs"
    logs.mkdir()
    names = ["backend1", "backend2", "backend3", "http", "admin"]
    ports = dict(zip(names, free_ports(len(names), args.port_base), strict=True))
    started: list[Managed] = []
    backends: list[Managed] = []
    wrk: subprocess.Popen[bytes] | None = None
    client: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    samples: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    restart_windows: list[tuple[float, float]] = []  # wall-clock (time.time())
    wrk_runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        user = "user root;" if os.geteuid() == 0 else ""
        docroot = scratch / "docroot"
        docroot.mkdir()
        (docroot / "64k").write_bytes(b"x" * 65536)
        kind = "nginx" if shutil.which("nginx") else "python"
        for i in (1, 2, 3):
            port = ports[f"backend{i}"]
            if kind == "nginx":
                run_dir = scratch / f"backend{i}"
                run_dir.mkdir()
                conf = render("backend-nginx.conf", run_dir / "nginx.conf", user_directive=user,
                              run_dir=run_dir, port=port, docroot=docroot)
                argv_b = ["nginx", "-p", str(run_dir), "-c", str(conf), "-e", str(run_dir / "error.log")]
            else:
                argv_b = [sys.executable, str(HERE / "backend.py"), str(port)]
            m = Managed(f"backend{i}", argv_b, logs / f"backend{i}.log", None)
            m.start()
            started.append(m)
            backends.append(m)
        for i, m in enumerate(backends, 1):
            wait_port(ports[f"backend{i}"], m)

        config = scratch / "lbproxy.yaml"
        write_config(config, "A", ports)
        check = subprocess.run([sys.executable, "-m", "lbproxy", "check", "-c", str(config)],
                               cwd=ROOT, capture_output=True, text=True)
        if check.returncode != 0:
            raise BenchError(f"lbproxy check failed: {check.stdout}{check.stderr}")
        write_config(scratch / "check-b.yaml", "B", ports)
        check = subprocess.run([sys.executable, "-m", "lbproxy", "check", "-c", str(scratch / "check-b.yaml")],
                               cwd=ROOT, capture_output=True, text=True)
        if check.returncode != 0:
            raise BenchError(f"lbproxy check (config B) failed: {check.stdout}{check.stderr}")
        lb = Managed("lbproxy", [sys.executable, "-m", "lbproxy", "run", "-c", str(config)],
                     logs / "lbproxy.log", None, cwd=ROOT)
        lb.start()
        started.append(lb)
        wait_port(ports["http"], lb)
        wait_port(ports["admin"], lb)
        time.sleep(1.5)  # first health checks
        pid = lb.pid

        status_path = scratch / "client-status.json"
        client = subprocess.Popen(
            [sys.executable, __file__, "--client", "--port", str(ports["http"]), "--status", str(status_path),
             "--newconn", str(args.newconn), "--keepalive", str(args.keepalive),
             "--aborters", str(args.aborters)],
            stdin=subprocess.DEVNULL, stdout=open(logs / "client.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)

        def client_status() -> dict[str, Any]:
            try:
                return json.loads(status_path.read_text())
            except (OSError, ValueError):
                return {"ok": {"newconn": 0, "keepalive": 0}, "aborts": {}, "failures": []}

        def start_wrk() -> tuple[subprocess.Popen[bytes], float]:
            return subprocess.Popen(
                ["wrk", "-t1", f"-c{args.wrk_connections}", f"-d{max(1, round(args.slice))}s", "--timeout", "10s",
                 "-s", str(REPORT_LUA), "-H", f"Host: {HOST_HEADER}",
                 f"http://127.0.0.1:{ports['http']}/"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True), time.time()

        t0 = time.monotonic()
        w0 = time.time()
        wrk, wrk_start = start_wrk()
        wrk_total = 0
        next_reload = args.reload_every
        next_restart = args.restart_every
        pending_start: tuple[float, int] | None = None  # (t, backend index)
        restart_i = 0
        variant = "A"
        tick = 0
        warm_sample: dict[str, Any] | None = None
        print(f"soak: lbproxy pid {pid}, http :{ports['http']}, admin :{ports['admin']}, "
              f"backends {kind}; target {args.requests:,} requests or {args.minutes} min", flush=True)
        while not stopping:
            tick += 1
            target_t = t0 + tick
            while time.monotonic() < target_t:
                time.sleep(min(0.05, max(0.0, target_t - time.monotonic())))
                if wrk.poll() is not None:
                    out = wrk.stdout.read().decode(errors="replace") if wrk.stdout else ""
                    end = time.time()
                    r = parse_wrk(out)
                    if r is None:
                        raise BenchError(f"wrk gave no result: {out[-500:]}")
                    r.update(start=wrk_start - w0, end=end - w0)
                    r["errors"] = sum(r.get(k, 0) for k in ("connect_errors", "read_errors", "write_errors",
                                                           "status_errors", "timeouts"))
                    r["restart_overlap"] = any(a <= end and b >= wrk_start for a, b in restart_windows) or (
                        pending_start is not None)
                    wrk_runs.append(r)
                    wrk_total += r["requests"]
                    wrk, wrk_start = start_wrk()
            now = time.monotonic() - t0
            # faults
            if pending_start is not None and now >= pending_start[0]:
                m = backends[pending_start[1]]
                m.start()
                wait_port(ports[f"backend{pending_start[1] + 1}"], m, timeout=10)
                restart_windows[-1] = (restart_windows[-1][0], time.time() + RESTART_GRACE)
                events.append({"t": now, "kind": "backend_start", "backend": pending_start[1] + 1})
                pending_start = None
            if now >= next_restart and pending_start is None:
                idx = restart_i % 3
                restart_i += 1
                restart_windows.append((time.time(), time.time() + 3600))
                backends[idx].stop()
                events.append({"t": now, "kind": "backend_stop", "backend": idx + 1})
                pending_start = (now + 1.0, idx)
                next_restart += args.restart_every
            if now >= next_reload:
                variant = "B" if variant == "A" else "A"
                write_config(config, variant, ports)
                os.kill(pid, signal.SIGHUP)
                events.append({"t": now, "kind": "reload", "variant": variant})
                next_reload += args.reload_every
            # sample
            if not lb.alive():
                raise BenchError(f"lbproxy exited:\n{lb.log_tail()}")
            cs = client_status()
            client_ok = cs["ok"]["newconn"] + cs["ok"]["keepalive"]
            wrk_est = wrk_total + int(max(0.0, time.time() - wrk_start) * (
                (wrk_runs[-1]["requests"] / max(0.1, wrk_runs[-1]["end"] - wrk_runs[-1]["start"]))
                if wrk_runs else 0))
            done = wrk_total + client_ok
            sample = {"t": round(now, 2), "rss_kib": proc_rss_kib(pid), "fds": proc_fds(pid),
                      "requests": done, "requests_est": wrk_est + client_ok}
            samples.append(sample)
            if warm_sample is None and now >= args.warmup:
                warm_sample = sample
            if tick % 30 == 0:
                print(f"  {now:6.0f}s  ~{sample['requests_est']:>10,} req  RSS {sample['rss_kib']:,} KiB  "
                      f"fds {sample['fds']}  failures so far {len(cs['failures'])}", flush=True)
            if sample["requests_est"] >= args.requests or now >= args.minutes * 60:
                break
        # stop load: let the current wrk slice finish, then the client
        if wrk is not None:
            try:
                out, _ = wrk.communicate(timeout=args.slice + 15)
                end = time.time()
                r = parse_wrk(out.decode(errors="replace")) or {"requests": 0}
                r.update(start=wrk_start - w0, end=end - w0)
                r["errors"] = sum(r.get(k, 0) for k in ("connect_errors", "read_errors", "write_errors",
                                                       "status_errors", "timeouts"))
                r["restart_overlap"] = any(a <= end and b >= wrk_start for a, b in restart_windows)
                wrk_runs.append(r)
                wrk_total += r["requests"]
            except subprocess.TimeoutExpired:
                pass
        if pending_start is not None:
            backends[pending_start[1]].start()
        if client is not None:
            client.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                client.wait(20)
        elapsed = time.monotonic() - t0
        final_sample = {"t": round(elapsed, 2), "rss_kib": proc_rss_kib(pid), "fds": proc_fds(pid)}
        cs = client_status()
        time.sleep(2)  # let lbproxy close what the clients closed
        settled = {"t": round(time.monotonic() - t0, 2), "rss_kib": proc_rss_kib(pid), "fds": proc_fds(pid)}
        metrics_text = ""
        with contextlib.suppress(Exception):
            import urllib.request
            metrics_text = urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/metrics", timeout=5).read().decode()

        # classify
        client_ok = cs["ok"]["newconn"] + cs["ok"]["keepalive"]
        fail_undeliberate = [f for f in cs["failures"] if not in_windows(f[0], restart_windows)]
        fail_restart = [f for f in cs["failures"] if in_windows(f[0], restart_windows)]
        wrk_err_undel = sum(r["errors"] for r in wrk_runs if not r.get("restart_overlap"))
        wrk_err_restart = sum(r["errors"] for r in wrk_runs if r.get("restart_overlap"))
        total = wrk_total + client_ok
        warm = warm_sample or samples[0]
        growth_kib = final_sample["rss_kib"] - warm["rss_kib"]
        req_after_warm = total - warm["requests"]
        per_million = growth_kib / (req_after_warm / 1e6) if req_after_warm > 0 else None
        after = [s for s in samples if s["t"] >= warm["t"]] or samples
        rss_after = [s["rss_kib"] for s in after]
        fds_all = [s["fds"] for s in samples]
        reloads_ok = reloads_fail = None
        for line in metrics_text.splitlines():
            if line.startswith("lbproxy_config_reloads_total"):
                v = float(line.rsplit(" ", 1)[1])
                if 'result="success"' in line:
                    reloads_ok = v
                elif 'result="failure"' in line:
                    reloads_fail = v
        metric_lines = [ln for ln in metrics_text.splitlines()
                        if ln.startswith(("lbproxy_config_reloads_total", "lbproxy_upstream_errors_total",
                                          "lbproxy_backend_ejections_total", "lbproxy_retries_total",
                                          "lbproxy_connections_rejected_total"))
                        or (ln.startswith("lbproxy_requests_total") and 'code="200"' not in ln)]
        result = {
            "date": stamp, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "backends": kind, "elapsed_s": round(elapsed, 1),
            "requests": {"total": total, "wrk_keepalive": wrk_total, "client_newconn": cs["ok"]["newconn"],
                         "client_keepalive": cs["ok"]["keepalive"], "per_s": round(total / elapsed, 1)},
            "aborts": cs["aborts"],
            "failures": {
                "undeliberate": len(fail_undeliberate) + wrk_err_undel,
                "deliberate_restart": len(fail_restart) + wrk_err_restart,
                "client_undeliberate": fail_undeliberate[:200],
                "client_restart_examples": fail_restart[:50],
                "client_restart_count": len(fail_restart),
                "wrk_errors_outside_restart": wrk_err_undel, "wrk_errors_in_restart_slices": wrk_err_restart,
            },
            "rss_kib": {"start": samples[0]["rss_kib"], "warm": warm["rss_kib"], "warm_t": warm["t"],
                        "end": final_sample["rss_kib"], "settled": settled["rss_kib"],
                        "min_after_warm": min(rss_after), "max_after_warm": max(rss_after),
                        "growth_after_warm_kib": growth_kib, "requests_after_warm": req_after_warm,
                        "growth_kib_per_million": round(per_million, 1) if per_million is not None else None},
            "fds": {"min": min(fds_all), "max": max(fds_all), "end": final_sample["fds"],
                    "settled": settled["fds"], "start": samples[0]["fds"]},
            "reloads": {"sent": sum(1 for e in events if e["kind"] == "reload"),
                        "success_metric": reloads_ok, "failure_metric": reloads_fail},
            "restarts": sum(1 for e in events if e["kind"] == "backend_stop"),
            "restart_windows": [(round(a - w0, 2), round(b - w0, 2)) for a, b in restart_windows],
            "metrics_excerpt": metric_lines, "events": events, "wrk_runs": wrk_runs, "samples": samples,
            "logs": str(logs),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / f"soak-{stamp}.json"
        json_path.write_text(json.dumps(result, indent=1))
        png = args.out / f"soak-{stamp}.png"
        title = (f"lbproxy soak {stamp}: {total:,} requests in {elapsed:.0f} s; RSS {warm['rss_kib']:,} KiB at "
                 f"warm-up end -> {final_sample['rss_kib']:,} KiB; fds {min(fds_all)}-{max(fds_all)}")
        chart = plot(samples, events, warm["t"], png, title)
        if png.exists():
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(png, DOCS / "soak.png")
        r = result
        print()
        print(f"Soak {stamp}: {elapsed:.0f} s, backends {kind}")
        print(f"  requests      {total:,} ({r['requests']['per_s']:,.0f} req/s): wrk keep-alive {wrk_total:,}, "
              f"new-connection {cs['ok']['newconn']:,}, asyncio keep-alive {cs['ok']['keepalive']:,}")
        print(f"  aborts        mid-request {cs['aborts'].get('mid_request', 0):,}, "
              f"mid-response {cs['aborts'].get('mid_response', 0):,}")
        print(f"  failures      undeliberate {r['failures']['undeliberate']:,}; deliberate (restart windows) "
              f"{r['failures']['deliberate_restart']:,}")
        print(f"  faults        {r['restarts']} backend restarts, {r['reloads']['sent']} reloads "
              f"(metric: {reloads_ok} ok, {reloads_fail} failed)")
        print(f"  RSS           {warm['rss_kib']:,} KiB at warm-up end ({warm['t']:.0f} s) -> "
              f"{final_sample['rss_kib']:,} KiB at the end ({growth_kib:+,} KiB over {req_after_warm:,} requests"
              f" = {per_million if per_million is not None else float('nan'):+,.1f} KiB per million); "
              f"min/max after warm-up {min(rss_after):,}/{max(rss_after):,} KiB")
        print(f"  fds           min {min(fds_all)}, max {max(fds_all)}, end {final_sample['fds']}, "
              f"2 s after load {settled['fds']}")
        print(f"  files         {json_path}, {chart}")
        return 0
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in (wrk, client):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for m in reversed(started):
            m.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        run_client(sys.argv[2:])
    else:
        sys.exit(main())

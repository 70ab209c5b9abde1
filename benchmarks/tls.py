#!/usr/bin/env python3
"""TLS termination benchmark: lbproxy against haproxy and nginx, one core each.

Usage::

    python benchmarks/tls.py                      # 5 s per run, 2 rounds (about 2 minutes)
    python benchmarks/tls.py --duration 2 --rounds 1

Creates a throwaway CA and a server certificate (RSA 2048, SAN localhost/127.0.0.1) with the
openssl CLI in a temp dir, starts three nginx backends (benchmarks/configs/backend-nginx.conf,
"hello world\\n") and, one at a time, the proxies terminating TLS with that certificate and
forwarding plain HTTP/1.1 round robin over the three backends with upstream keep-alive:

- lbproxy: ``python -m lbproxy run -c CONFIG``, an http listener with ``tls: {certificates: ...}``;
- haproxy: ``bind ... ssl crt PEM`` (cert + key concatenated), 1 thread, mode http, http-reuse always;
- nginx: ``listen ... ssl``, 1 worker, upstream keepalive 64.

TLS settings are each proxy's defaults (all negotiate TLS 1.3 with wrk). Two scenarios with wrk
-t1 -c50: ``handshake`` (``Connection: close``: every request a new TCP + full TLS handshake; wrk
does not resume sessions) and ``keepalive`` (requests over long-lived TLS connections). Systems
alternate within each round (order rotating). The proxy is pinned to --proxy-cpu, wrk, the
backends and this harness to --load-cpu (taskset). CPU µs/request is the proxy's utime+stime
(/proc/PID/stat, process tree) before/after the run over wrk's completed requests.

Helpers (process management, /proc readings, ports, templates) come from benchmarks/run.py.
Writes benchmarks/results/tls-YYYYmmdd-HHMMSS.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    REPORT_LUA,
    RESULTS,
    ROOT,
    RUNNING,
    BenchError,
    Managed,
    cpu_ticks_by_pid,
    foreign_cpu,
    free_ports,
    render,
    tree_user_system_seconds,
    wait_port,
)

SYSTEMS = ("lbproxy", "haproxy", "nginx")
SCENARIOS = {"handshake": "new TLS connection per request (Connection: close), 50 clients",
             "keepalive": "keep-alive over TLS, 50 clients"}


def sh(argv: list[str], cwd: Path) -> None:
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {out.stderr.strip()}")


def make_certs(d: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate signed by it (openssl CLI)."""
    sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bench CA",
        "-keyout", "ca.key", "-out", "ca.crt"], d)
    sh(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr"], d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    sh(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt"], d)
    (d / "server.pem").write_bytes((d / "server.crt").read_bytes() + (d / "server.key").read_bytes())
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key", "pem": d / "server.pem"}


LBPROXY_YAML = """\
drain_timeout: 2s
pools:
  web:
    strategy: round_robin
    backends: [127.0.0.1:{b1}, 127.0.0.1:{b2}, 127.0.0.1:{b3}]
listeners:
  - name: tls
    bind: 127.0.0.1:{port}
    mode: http
    backlog: 4096
    tls:
      certificates: [{{cert: {cert}, key: {key}}}]
    routes:
      - pool: web
    limits:
      keepalive_timeout: 120s
"""

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 2000
    stats socket {sock}
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    http-reuse always
frontend fe_tls
    bind 127.0.0.1:{port} ssl crt {pem}
    default_backend be
backend be
    balance roundrobin
    server b1 127.0.0.1:{b1}
    server b2 127.0.0.1:{b2}
    server b3 127.0.0.1:{b3}
"""

NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    upstream be {{
        server 127.0.0.1:{b1};
        server 127.0.0.1:{b2};
        server 127.0.0.1:{b3};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_protocols TLSv1.2 TLSv1.3;  # nginx 1.22's default lacks TLSv1.3 (added to it in 1.23.4)
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def https_get(port: int, ca: Path) -> tuple[int, bytes]:
    """GET / over TLS, verifying the certificate against the throwaway CA."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=ctx, timeout=5) as r:
        return r.status, r.read()


def tls_version(port: int, ca: Path) -> str:
    import socket

    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
        return f"{t.version()} {t.cipher()[0]}"


def run_wrk(load_cpu: str, port: int, seconds: int, close: bool) -> dict[str, Any]:
    argv = ["taskset", "-c", load_cpu, "wrk", "-t1", "-c50", f"-d{seconds}s", "--timeout", "5s",
            "-s", str(REPORT_LUA)]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"https://127.0.0.1:{port}/")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    m = re.search(r"^WRKJSON (.*)$", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not m:
        raise BenchError(f"wrk failed (exit {out.returncode}): {out.stderr.strip()} {out.stdout.strip()}")
    data: dict[str, Any] = json.loads(m.group(1))
    return data


def lo_bytes() -> int:
    """Bytes received on the loopback interface so far (/proc/net/dev)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    return 0


def haproxy_info(sock: Path) -> dict[str, str]:
    """haproxy's `show info` (its TLS counters: session reuse, key rate)."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"show info\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as exc:
        return {"error": str(exc)}
    return dict(line.split(": ", 1) for line in data.decode().splitlines() if ": " in line)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=5, help="seconds per run (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up seconds per system and scenario")
    p.add_argument("--load-cpu", default="0")
    p.add_argument("--proxy-cpu", default="1")
    p.add_argument("--port-base", type=int, default=23000)
    args = p.parse_args()
    for tool in ("wrk", "taskset", "openssl", "nginx", "haproxy"):
        if not shutil.which(tool):
            print(f"missing: {tool}", file=sys.stderr)
            return 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.sched_setaffinity(0, {int(args.load_cpu.split(",")[0].split("-")[0])})
    stamp = datetime.datetime.now()
    scratch = Path(tempfile.mkdtemp(prefix="lbproxy-tls-"))
    logs = scratch / "logs"
    logs.mkdir()
    user = "user root;" if os.geteuid() == 0 else ""
    runs: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"date": stamp.isoformat(timespec="seconds"), "duration_s": args.duration,
                            "rounds": args.rounds, "load_cpu": args.load_cpu, "proxy_cpu": args.proxy_cpu,
                            "certificate": "RSA 2048 signed by a throwaway CA", "protocol": {}}
    started: list[Managed] = []
    try:
        certs = make_certs(scratch)
        ports = free_ports(6, args.port_base)
        bports = {"b1": ports[0], "b2": ports[1], "b3": ports[2]}
        pports = dict(zip(SYSTEMS, ports[3:], strict=True))
        docroot = scratch / "docroot"
        docroot.mkdir()
        (docroot / "64k").write_bytes(b"x" * 65536)
        for i, port in enumerate(ports[:3], 1):
            run_dir = scratch / f"backend{i}"
            run_dir.mkdir()
            conf = render("backend-nginx.conf", run_dir / "nginx.conf", user_directive=user, run_dir=run_dir,
                          port=port, docroot=docroot)
            proc = Managed(f"backend{i}", ["nginx", "-p", str(run_dir), "-c", str(conf), "-e",
                                           str(run_dir / "error.log")], logs / f"backend{i}.log", args.load_cpu)
            proc.start()
            started.append(proc)
            wait_port(port, proc)

        argvs: dict[str, tuple[list[str], dict[str, str] | None, Path | None]] = {}
        conf = scratch / "lbproxy.yaml"
        conf.write_text(LBPROXY_YAML.format(port=pports["lbproxy"], cert=certs["cert"], key=certs["key"], **bports))
        env = dict(os.environ, PYTHONPATH=str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"]
                                                     if os.environ.get("PYTHONPATH") else ""))
        argvs["lbproxy"] = ([sys.executable, "-m", "lbproxy", "run", "-c", str(conf), "--log-level", "warning"],
                            env, ROOT)
        conf = scratch / "haproxy.cfg"
        conf.write_text(HAPROXY_CFG.format(port=pports["haproxy"], pem=certs["pem"], sock=scratch / "haproxy.sock", **bports))
        argvs["haproxy"] = (["haproxy", "-db", "-f", str(conf)], None, None)
        run_dir = scratch / "nginx"
        run_dir.mkdir()
        conf = run_dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, run=run_dir, port=pports["nginx"], cert=certs["cert"],
                                          key=certs["key"], **bports))
        argvs["nginx"] = (["nginx", "-p", str(run_dir), "-c", str(conf), "-e", str(run_dir / "error.log")],
                          None, None)

        print(f"TLS benchmark: {args.duration} s x {args.rounds} rounds; proxy core {args.proxy_cpu}, "
              f"load core {args.load_cpu}; scratch {scratch}")
        for rnd in range(args.rounds):
            order = list(SYSTEMS[rnd % 3:] + SYSTEMS[:rnd % 3])
            for system in order:
                argv, penv, cwd = argvs[system]
                proc = Managed(system, argv, logs / f"{system}.log", args.proxy_cpu, env=penv, cwd=cwd)
                proc.start()
                started.append(proc)
                try:
                    wait_port(pports[system], proc)
                    status, body = https_get(pports[system], certs["ca"])
                    if status != 200 or body != b"hello world\n":
                        raise BenchError(f"{system}: GET / gave {status} {body[:60]!r}")
                    meta["protocol"][system] = tls_version(pports[system], certs["ca"])
                    for scenario in SCENARIOS:
                        close = scenario == "handshake"
                        run_wrk(args.load_cpu, pports[system], args.warmup, close)
                        lo0, all0 = lo_bytes(), cpu_ticks_by_pid()
                        u0, s0 = tree_user_system_seconds(proc.pid)
                        raw = run_wrk(args.load_cpu, pports[system], args.duration, close)
                        u1, s1 = tree_user_system_seconds(proc.pid)
                        lo1, others = lo_bytes(), foreign_cpu(all0, cpu_ticks_by_pid())
                        if not proc.alive():
                            raise BenchError(f"{system} died: {proc.log_tail()}")
                        n = raw["requests"]
                        errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors",
                                                      "status_errors", "timeouts"))
                        row = {"round": rnd + 1, "system": system, "scenario": scenario, **raw,
                               "rps": n / (raw["duration_us"] / 1e6),
                               "cpu_us": ((u1 - u0) + (s1 - s0)) * 1e6 / n if n else None,
                               "cpu_user_us": (u1 - u0) * 1e6 / n if n else None,
                               "cpu_sys_us": (s1 - s0) * 1e6 / n if n else None, "errors": errors,
                               # every byte on loopback (client<->proxy and proxy<->backends) per
                               # request: a full TLS handshake carries ~1.2 KB more than a resumed one
                               "lo_bytes_per_req": (lo1 - lo0) / n if n else None,
                               # CPU-s used meanwhile by processes this harness didn't start (noise)
                               "foreign_cpu_s": sum(others.values()), "foreign_cpu_by_command": others}
                        if system == "haproxy" and close:
                            info = haproxy_info(scratch / "haproxy.sock")
                            row["haproxy_ssl"] = {k: v for k, v in info.items() if k.startswith("Ssl")}
                        runs.append(row)
                        print(f"  round {rnd + 1} {scenario:<9} {system:<8} {row['rps']:>9,.0f} req/s "
                              f"{row['cpu_us'] or 0:7.1f} CPU-us/req  {row['lo_bytes_per_req'] or 0:6.0f} lo B/req"
                              f"  errors {errors}  other processes {row['foreign_cpu_s']:.2f} CPU-s"
                              + (f"  haproxy SslFrontendSessionReuse_pct "
                                 f"{row['haproxy_ssl'].get('SslFrontendSessionReuse_pct')}" if "haproxy_ssl" in row
                                 else ""))
                finally:
                    proc.stop()
                    RUNNING.pop(proc.pid, None)
    finally:
        for proc in started:
            proc.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    # summary: medians over rounds
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for scenario in SCENARIOS:
        for system in SYSTEMS:
            rs = [r for r in runs if r["scenario"] == scenario and r["system"] == system]
            if rs:
                summary.setdefault(scenario, {})[system] = {
                    "rps": statistics.median(r["rps"] for r in rs),
                    "rps_min": min(r["rps"] for r in rs), "rps_max": max(r["rps"] for r in rs),
                    "cpu_us": statistics.median(r["cpu_us"] for r in rs),
                    "cpu_user_us": statistics.median(r["cpu_user_us"] for r in rs),
                    "cpu_sys_us": statistics.median(r["cpu_sys_us"] for r in rs),
                    "p99_ms": statistics.median(r["p99_us"] for r in rs) / 1000,
                    "lo_bytes_per_req": statistics.median(r["lo_bytes_per_req"] for r in rs),
                    "errors": sum(r["errors"] for r in rs)}
    lines = [f"TLS run {meta['date']} ({args.duration} s × {args.rounds} rounds, wrk -t1 -c50, "
             f"RSA 2048 certificate; negotiated: "
             + ", ".join(f"{k} {v}" for k, v in meta["protocol"].items()) + "). Cells: median of the rounds.",
             "", "| scenario | system | req/s | CPU µs/req (user/sys) | p99 ms | loopback B/req | errors | vs haproxy: req/s, CPU |",
             "|---|---|---|---|---|---|---|---|"]
    ratios: dict[str, dict[str, float]] = {}
    for scenario, by_system in summary.items():
        for system, s in by_system.items():
            ratio = ""
            h = by_system.get("haproxy")
            if system != "haproxy" and h:
                rr, rc = s["rps"] / h["rps"], s["cpu_us"] / h["cpu_us"]
                ratios.setdefault(scenario, {})[system] = {"rps": rr, "cpu": rc}
                ratio = f"{rr:.2f}×, {rc:.2f}×"
            label = "handshakes/s (Connection: close)" if scenario == "handshake" else "keep-alive"
            lines.append(f"| {label} | {system} | {s['rps']:,.0f} ({s['rps_min']:,.0f}–{s['rps_max']:,.0f}) | "
                         f"{s['cpu_us']:.1f} ({s['cpu_user_us']:.1f}/{s['cpu_sys_us']:.1f}) | "
                         f"{s['p99_ms']:.2f} | {s['lo_bytes_per_req']:,.0f} | {s['errors']} | {ratio} |")
    text = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"tls-{stamp:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"meta": meta, "runs": runs, "summary": summary, "ratios": ratios}, indent=1))
    print("\n" + text + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""lbproxy benchmark suite (issue 8): lbproxy against haproxy and nginx, one core each.

Usage (see benchmarks/README.md)::

    python benchmarks/run.py                 # full suite: 5 s per run, 3 rounds
    python benchmarks/run.py --quick         # 2 s per run, 1 round
    python benchmarks/run.py --scenarios l7-keepalive,l4-bulk-1 --profile

How it works: the harness pins itself, wrk, iperf3, the idle-connection client and the three
backends to the load core (``--load-cpu``) and every proxy to the proxy core (``--proxy-cpu``) with
taskset. It starts three backends (nginx, or benchmarks/backend.py without nginx), an iperf3 server,
and per scenario the proxies under test: lbproxy (access log off, and on as "lbproxy+log"), and when
installed haproxy and nginx with the anchors' settings (configs/). Each scenario runs every system
once per round, the order rotating round by round, after a short warm-up. A proxy's CPU is
utime+stime from /proc/PID/stat summed over its process tree, read before and after each run; its
memory is VmRSS from /proc/PID/status summed the same way. Every process the harness starts gets
its own process group and is stopped by PID (SIGTERM, then SIGKILL) in a finally block.

Outputs go to benchmarks/results/bench-YYYYmmdd-HHMMSS/: results.json (every run and the medians),
table.md (what is printed at the end), chart.png (when matplotlib is installed) and logs/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import browser_request
from cpu_quota import IDLE_FILLER, CpuQuota
from cpu_quota import available as quotas_available

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = HERE / "configs"
RESULTS = HERE / "results"
REPORT_LUA = CONFIGS / "report.lua"
HOST_HEADER = browser_request.HOST  # "bench.example.com": matches only lbproxy's last route
CLK_TCK = os.sysconf("SC_CLK_TCK")
GB = 1e9  # GB/s and CPU-s/GB use decimal gigabytes
ACTIVE_CLIENTS = 50
HAPROXY_MAXPIPES = 256  # splice pipes for haproxy-l4 (default maxconn/4 would eat the fd limit)
IDLE_SLOWDOWN_LIMIT = 0.9  # "idle connections don't slow active clients": >= 0.9x (noise ~5%)
LOAD_BOUND = 0.9  # a load core busier than this may be what limits the requests/s
SCALING_QUOTA = 0.35  # CPU per worker in the scaling scenario when no core per worker is free


class BenchError(Exception):
    """A run could not be measured (tool failure, proxy died, bad output)."""


class Stop(BaseException):
    """SIGTERM to the harness: unwind like Ctrl-C so the finally blocks clean up."""


# --------------------------------------------------------------------------------------------
# /proc readings


def _stat_fields(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (nginx workers, lbproxy workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(_stat_fields(entry.name)[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    pids = [root]
    i = 0
    while i < len(pids):
        pids.extend(children.get(pids[i], ()))
        i += 1
    return pids


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def tree_cpu_seconds(root: int) -> float:
    """utime + stime (all threads) of ``root``'s process tree, in seconds."""
    return sum(tree_user_system_seconds(root))


def tree_user_system_seconds(root: int) -> tuple[float, float]:
    """(utime, stime) (all threads) of ``root``'s process tree, in seconds."""
    user = system = 0
    for pid in process_tree(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def status_value(path: str, field: str) -> int:
    """The number after ``field`` in a /proc status file; 0 if absent or gone."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root: int) -> int:
    """VmRSS of ``root``'s process tree, in KiB."""
    return sum(status_value(f"/proc/{pid}/status", "VmRSS:") for pid in process_tree(root))


def tree_sleeps(root: int) -> int:
    """Voluntary context switches of ``root``'s process tree (its threads included): how
    often it went to sleep waiting for events."""
    total = 0
    for pid in process_tree(root):
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        total += sum(status_value(f"/proc/{pid}/task/{task}/status", "voluntary_ctxt_switches:") for task in tasks)
    return total


def cpu_jiffies(cpus: Iterable[int]) -> dict[str, int]:
    """Jiffies of the given CPUs from /proc/stat: busy (not idle, iowait or steal), softirq,
    steal and total."""
    wanted = {f"cpu{c}" for c in cpus}
    out = {"busy": 0, "softirq": 0, "steal": 0, "total": 0}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] in wanted:
                user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in parts[1:9])
                out["busy"] += user + nice + system + irq + softirq  # guest time is inside user
                out["softirq"] += softirq
                out["steal"] += steal
                out["total"] += user + nice + system + idle + iowait + irq + softirq + steal
    return out


def cpu_ticks_by_pid() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, utime + stime ticks, command name) for every process."""
    out: dict[int, tuple[int, int, str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    data = f.read()
                comm = data[data.index("(") + 1:data.rindex(")")]
                fields = data.rsplit(")", 1)[1].split()
                out[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), comm)
            except (OSError, IndexError, ValueError):
                continue
    return out


def foreign_cpu(before: dict[int, tuple[int, int, str]],
                after: dict[int, tuple[int, int, str]]) -> dict[str, float]:
    """CPU seconds used between two snapshots, by command name, by processes that are neither the
    harness's descendants nor kernel threads: other users of the machine, i.e. noise."""
    ours = {os.getpid(), 2}  # 2: kthreadd, the parent of kernel threads (ksoftirqd ...)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in after.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    out: dict[str, float] = {}
    for pid, (_, ticks, comm) in after.items():
        if pid not in ours:
            used = (ticks - before[pid][1]) if pid in before else ticks
            if used > 0:
                out[comm] = out.get(comm, 0.0) + used / CLK_TCK
    return out


def speed_probe_ms(cpu: int, loops: int = 150_000) -> float:
    """CPU milliseconds of a fixed Python loop on ``cpu`` (median of 3): how fast the machine is
    right now. On a shared VM it drifts; runs whose probe is slow are slow for every system."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        times = []
        for _ in range(3):
            t = time.thread_time()
            x = 0
            for i in range(loops):
                x += i
            times.append((time.thread_time() - t) * 1000)
        return statistics.median(times)
    finally:
        os.sched_setaffinity(0, old)


def parse_cpus(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


# --------------------------------------------------------------------------------------------
# processes


class Managed:
    """One process the harness started: own process group, log file, stopped by PID."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cpus: str | None,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = (["taskset", "-c", cpus] if cpus else []) + argv
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=self.env, cwd=self.cwd,
            )
        RUNNING[self.proc.pid] = self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the process group we created, then SIGKILL; reaps the leader."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        if self.proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.proc.wait(5)
        # children that outlived the leader (an nginx worker) are still in the group
        _signal_group(pgid, signal.SIGKILL)
        RUNNING.pop(self.proc.pid, None)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


RUNNING: dict[int, Managed] = {}


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_port(port: int, proc: Managed, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            tail = proc.log_tail()
            last = tail.strip().splitlines()[-1] if tail.strip() else ""
            raise BenchError(f"{proc.name} exited during start-up ({last})\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{proc.name}: nothing listening on port {port} after {timeout}s:\n"
                                 f"{proc.log_tail()}") from None
            time.sleep(0.05)


def http_get(port: int, path: str = "/", host: str = HOST_HEADER, timeout: float = 5) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def free_ports(count: int, base: int) -> list[int]:
    """``count`` ports from ``base`` up (below the ephemeral range) that bind on 127.0.0.1 now."""
    ports: list[int] = []
    port = base
    while len(ports) < count:
        if port > 65535:
            raise BenchError(f"not enough free ports from {base}")
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    return ports


def tree_digest(path: Path) -> str:
    """A short hash of the .py files under ``path``: identifies the lbproxy code measured."""
    import hashlib

    digest = hashlib.sha1()
    for file in sorted(path.rglob("*.py")):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:12]


def render(template: str, out: Path, **values: object) -> Path:
    text = string.Template((CONFIGS / template).read_text()).substitute(
        {k: str(v) for k, v in values.items()})
    out.write_text(text)
    return out


# --------------------------------------------------------------------------------------------
# load generators


def run_wrk(env: Env, port: int, duration: float, connections: int, path: str = "/",
            close: bool = False, fields: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """wrk against ``port``: Host, then ``fields`` (a browser's, for l7-browser), as ``-H``."""
    argv = ["taskset", "-c", env.load_cpus, "wrk", "-t1", f"-c{connections}", f"-d{wrk_seconds(duration)}s",
            "--timeout", "5s", "-s", str(REPORT_LUA), "-H", f"Host: {HOST_HEADER}"]
    for name, value in fields:
        argv += ["-H", f"{name}: {value}"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}{path}")
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {duration + 60:g}s") from None
    match = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise BenchError(f"wrk failed (exit {out.returncode}): {out.stderr.strip()} {out.stdout.strip()}")
    data: dict[str, Any] = json.loads(match.group(1))
    return data


def wrk_seconds(duration: float) -> int:
    """wrk takes whole seconds only."""
    return max(1, round(duration))


H2LOAD_FINISHED = re.compile(r"^finished in ([\d.]+)(us|ms|s),", re.M)
H2LOAD_REQUESTS = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                             r"(\d+) failed, (\d+) errored, (\d+) timeout", re.M)
H2LOAD_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
H2LOAD_REQUEST_TIME = re.compile(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)", re.M)
_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _h2load_us(text: str) -> float:
    """h2load's durations: '247us', '5.20ms', '1.02s'."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise BenchError(f"unreadable h2load duration {text!r}")
    return float(match.group(1)) * _UNIT_US[match.group(2)]


def parse_h2load(text: str) -> dict[str, Any]:
    """The figures of one h2load run, from its summary: requests (succeeded), duration_us,
    failed/errored/timeouts, non-2xx statuses, request time min/max/mean in ms."""
    finished, requests = H2LOAD_FINISHED.search(text), H2LOAD_REQUESTS.search(text)
    status, timing = H2LOAD_STATUS.search(text), H2LOAD_REQUEST_TIME.search(text)
    if finished is None or requests is None or status is None:
        raise BenchError(f"h2load printed no summary: {text.strip()[-500:]}")
    total, _started, done, succeeded, failed, errored, timeouts = map(int, requests.groups())
    ok2xx = int(status.group(1))
    out: dict[str, Any] = {
        "requests": succeeded, "planned": total, "unfinished": total - done, "failed": failed,
        "errored": errored, "timeouts": timeouts, "status_errors": succeeded - ok2xx,
        "duration_us": _h2load_us(finished.group(1) + finished.group(2)),
    }
    if timing is not None:
        out["min_ms"], out["max_ms"], out["mean_ms"] = (_h2load_us(v) / 1e3 for v in timing.groups())
    return out


def h2load_rate_args(rate: int) -> tuple[int, int]:
    """(connections per period, period in ms) giving ``rate`` new connections per second in the
    smallest bursts h2load allows: whole connections every whole millisecond (6,000/s: 6 every
    1 ms; 2,500/s: 5 every 2 ms)."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, not {rate}")
    step = math.gcd(rate, 1000)
    return rate // step, 1000 // step


def run_h2load_rate(env: Env, port: int, duration: float, rate: int) -> dict[str, Any]:
    """Open ``rate`` connections per second for ``duration`` seconds, one request each with
    ``Connection: close`` (open loop: arrivals don't wait for answers), and return
    ``parse_h2load``'s figures plus ``rate`` and ``errors``."""
    per, period_ms = h2load_rate_args(rate)
    count = max(per, round(rate * duration))
    argv = ["taskset", "-c", env.load_cpus, "h2load", "--h1", "-n", str(count), "-c", str(count),
            "-r", str(per), "--rate-period", f"{period_ms}ms", "-T", "5s",
            # h2load sends Host from :authority; a -H Host would be a second Host field
            "-H", f":authority: {HOST_HEADER}", "-H", "Connection: close", f"http://127.0.0.1:{port}/"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"h2load did not finish within {duration + 60:g}s") from None
    if out.returncode != 0:
        raise BenchError(f"h2load failed (exit {out.returncode}): {(out.stderr + out.stdout).strip()[-500:]}")
    data = parse_h2load(out.stdout)
    data["rate"] = rate
    data["errors"] = data["failed"] + data["errored"] + data["timeouts"] + data["status_errors"] + data["unfinished"]
    return data


def run_iperf(env: Env, port: int, duration: float, streams: int) -> dict[str, Any]:
    argv = ["taskset", "-c", env.load_cpus, "iperf3", "-c", "127.0.0.1", "-p", str(port),
            "-t", f"{duration:g}", "-P", str(streams), "-J"]
    last = ""
    for attempt in range(3):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"iperf3 did not finish within {duration + 60:g}s") from None
        try:
            data = json.loads(out.stdout)
        except json.JSONDecodeError:
            data = {"error": (out.stderr or out.stdout).strip()}
        if "error" not in data:
            received = data["end"]["sum_received"]
            return {"bytes": received["bytes"], "seconds": received["seconds"]}
        last = str(data["error"])
        if "busy" not in last:  # the server still finishing the previous test: retry
            break
        time.sleep(1 + attempt)
    raise BenchError(f"iperf3 failed: {last}")


def read_response(sock: socket.socket) -> None:
    """Read one HTTP/1.1 response with Content-Length; raise BenchError unless it is a 200."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"connection closed before a response ({data[:80]!r})")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise BenchError(f"idle client got {head.splitlines()[0]!r}")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    remaining = int(match.group(1)) - len(body) if match else 0
    while remaining > 0:
        chunk = sock.recv(remaining)
        if not chunk:
            raise BenchError("connection closed inside a response body")
        remaining -= len(chunk)


def open_idle(port: int, count: int, batch: int = 250) -> list[socket.socket]:
    """``count`` keep-alive connections, each after one request and its response; left idle."""
    request = f"GET / HTTP/1.1\r\nHost: {HOST_HEADER}\r\nUser-Agent: bench-idle\r\n\r\n".encode()
    socks: list[socket.socket] = []
    try:
        while len(socks) < count:
            group = []
            for _ in range(min(batch, count - len(socks))):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                group.append(s)
                socks.append(s)
                s.sendall(request)
            for s in group:
                read_response(s)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()
    socks.clear()


# --------------------------------------------------------------------------------------------
# systems and scenarios


@dataclass
class Server:
    """A proxy process definition (started per scenario)."""

    key: str
    argv: list[str]
    ports: dict[str, int]
    cpus: str
    env: dict[str, str] | None = None
    cwd: Path | None = None
    missing: str = ""  # why it can't run here


@dataclass(frozen=True)
class System:
    label: str  # as printed: lbproxy, lbproxy+log, haproxy, haproxy-splice, nginx ...
    server: str  # Server.key
    role: str  # which port of the server: http, tcp, iperf, iperf_splice


@dataclass
class Scenario:
    key: str
    title: str
    kind: str  # wrk | rate | iperf | idle | scaling
    systems: list[System]
    connections: int = ACTIVE_CLIENTS
    path: str = "/"
    close: bool = False
    streams: int = 1
    idle: int = 0  # idle connections (idle scenarios)
    rate: int = 0  # new connections per second (rate scenarios)
    fields: tuple[tuple[str, str], ...] = ()  # request fields sent after Host (wrk scenarios)
    note: str = ""


def wants_alt(args: argparse.Namespace) -> bool:
    """Whether the run has an ``lbproxy-alt`` system (``--alt-src`` or ``--alt-python``)."""
    return args.alt_src is not None or args.alt_python is not None


def l7(*labels: str) -> list[System]:
    known = {"lbproxy": System("lbproxy", "lbproxy", "http"),
             "lbproxy+log": System("lbproxy+log", "lbproxy-log", "http"),
             "haproxy": System("haproxy", "haproxy-l7", "http"),
             "nginx": System("nginx", "nginx-l7", "http"),
             "minimal": System("minimal", "minimal-l7", "http"),
             "lbproxy-alt": System("lbproxy-alt", "lbproxy-alt", "http")}
    return [known[label] for label in labels]


def l4(*labels: str, role: str = "tcp") -> list[System]:
    known = {"lbproxy": System("lbproxy", "lbproxy", role),
             "lbproxy-splice": System("lbproxy-splice", "lbproxy", "iperf_splice"),
             "lbproxy+log": System("lbproxy+log", "lbproxy-log", role),
             "haproxy": System("haproxy", "haproxy-l4", role),
             "haproxy-splice": System("haproxy-splice", "haproxy-l4", "iperf_splice"),
             "nginx": System("nginx", "nginx-stream", role)}
    return [known[label] for label in labels]


def all_scenarios(idle_l7: int, idle_l4: int, alt: bool = False, newconn_rate: int = 6000) -> list[Scenario]:
    every_l7 = l7("lbproxy", "lbproxy+log", "haproxy", "nginx", "minimal", *(["lbproxy-alt"] if alt else []))
    return [
        Scenario("l7-keepalive", "L7 keep-alive, 12-byte responses, 50 clients", "wrk", every_l7),
        Scenario("l7-newconn", "L7 new connection per request (Connection: close), 50 clients", "wrk",
                 every_l7, close=True),
        # The same work at an equal, open-loop load: wrk's closed loop gives each proxy the rate it
        # can carry, so a slower proxy is measured saturated and a faster one with idle time between
        # events; a fixed arrival rate below every proxy's capacity compares the work per connection
        # alone (what capacity planning needs: CPU at N connections/s).
        Scenario("l7-newconn-rate", f"L7 new connection per request at a fixed {newconn_rate:,} connections/s "
                 "(h2load, open loop)", "rate",
                 l7("lbproxy", "haproxy", "nginx", "minimal", *(["lbproxy-alt"] if alt else [])), close=True,
                 rate=newconn_rate),
        Scenario("l7-64k", "L7 keep-alive, 64 KiB responses, 50 clients", "wrk", every_l7, path="/64k"),
        Scenario("l7-1000", "L7 keep-alive, 1,000 clients", "wrk", every_l7, connections=1000),
        # wrk's request has a Host field alone; a browser's has 16 (benchmarks/browser_request.py).
        Scenario("l7-browser", "L7 keep-alive, a browser's request (16 fields, 686 bytes), 50 clients", "wrk",
                 l7("lbproxy", "haproxy", "nginx", "minimal"), fields=browser_request.FIELDS),
        Scenario("l4-keepalive", "L4 (tcp mode) keep-alive HTTP, 50 clients", "wrk",
                 l4("lbproxy", "haproxy", "nginx")),
        Scenario("l4-bulk-1", "L4 bulk, iperf3 1 stream", "iperf",
                 l4("lbproxy", "lbproxy-splice", "haproxy", "haproxy-splice", "nginx", role="iperf"), streams=1),
        Scenario("l4-bulk-4", "L4 bulk, iperf3 4 streams", "iperf",
                 l4("lbproxy", "lbproxy-splice", "haproxy", "haproxy-splice", "nginx", role="iperf"), streams=4),
        Scenario("l4-connrate", "L4 (tcp mode) new connection per request, 50 clients", "wrk",
                 l4("lbproxy", "lbproxy+log", "haproxy", "nginx"), close=True),
        Scenario("idle-l7", f"L7 {idle_l7:,} idle keep-alive connections (+ 50 active clients)", "idle",
                 l7("lbproxy", "haproxy", "nginx"), idle=idle_l7),
        Scenario("idle-l4", f"L4 {idle_l4:,} idle connections (+ 50 active clients)", "idle",
                 l4("lbproxy", "haproxy", "nginx"), idle=idle_l4),
        Scenario("scaling", "lbproxy 1 vs 2 workers, L7 keep-alive, 50 clients", "scaling",
                 [System("lbproxy 1 worker", "lbproxy-w1", "http"),
                  System("lbproxy 2 workers", "lbproxy-w2", "http")]),
    ]


# --------------------------------------------------------------------------------------------
# the environment: scratch dir, ports, backends, proxies


class Env:
    def __init__(self, args: argparse.Namespace, out_dir: Path) -> None:
        self.args = args
        self.out_dir = out_dir
        self.logs = out_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="lbproxy-bench-"))
        self.load_cpus = args.load_cpu
        self.proxy_cpus = args.proxy_cpu
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.background: list[Managed] = []  # backends, iperf3 server: the whole suite
        self.servers: dict[str, Server] = {}
        self.access_log = self.scratch / "access.log"
        self.notes: list[str] = []
        self.backend_kind = "nginx" if shutil.which("nginx") else "python"
        self.lbproxy_src = self.scratch / "lbproxy-src"
        self.alt_src = self.scratch / "lbproxy-alt-src"  # --alt-src: a second lbproxy, A/B in one run
        self.lbproxy_digest = ""
        self.workers_flag = False
        self.quotas: list[CpuQuota] = []  # --scaling-quota's cgroups, removed at teardown
        # haproxy 2.6 refuses to start unless ulimit -n >= 2 * maxconn + 2 * maxpipes + a few
        self.haproxy_maxconn = min(12000, (self.fd_limit - 100) // 2)
        self.haproxy_l4_maxconn = min(12000, (self.fd_limit - 100 - 2 * HAPROXY_MAXPIPES) // 2)

    def backend_accepts(self) -> int | None:
        """Connections the three nginx backends have accepted so far (stub_status), or None."""
        if self.backend_kind != "nginx":
            return None
        total = 0
        for i in (1, 2, 3):
            try:
                status, body = http_get(self.ports[f"backend{i}"], "/nginx_status", host="127.0.0.1")
            except OSError:
                return None
            match = re.search(rb"server accepts handled requests\s+(\d+)", body)
            if status != 200 or not match:
                return None
            total += int(match.group(1))
        return total

    def lbproxy_env(self, src: Path | None = None) -> dict[str, str]:
        env = dict(os.environ)
        path = str(src or self.lbproxy_src)
        env["PYTHONPATH"] = path + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def setup(self) -> None:
        # lbproxy runs from a copy of its package taken now, so edits to the tree during the run
        # don't mix versions between scenarios
        shutil.copytree(self.args.lbproxy_src / "lbproxy", self.lbproxy_src / "lbproxy",
                        ignore=shutil.ignore_patterns("__pycache__"))
        self.lbproxy_digest = tree_digest(self.lbproxy_src / "lbproxy")
        if wants_alt(self.args):
            shutil.copytree((self.args.alt_src or self.args.lbproxy_src) / "lbproxy", self.alt_src / "lbproxy",
                            ignore=shutil.ignore_patterns("__pycache__"))
        check = subprocess.run([sys.executable, "-m", "lbproxy", "run", "--help"], capture_output=True,
                               text=True, cwd=self.lbproxy_src, env=self.lbproxy_env())
        if check.returncode != 0:
            raise BenchError(f"`python -m lbproxy run --help` fails with the lbproxy in {self.args.lbproxy_src}:\n"
                             f"{check.stderr.strip()[-2000:]}")
        self.workers_flag = "--workers" in check.stdout
        names = ["backend1", "backend2", "backend3", "iperf_backend"]
        lbproxy_roles = ["http", "tcp", "iperf", "iperf_splice", "admin"]
        roles = {"lbproxy": lbproxy_roles, "lbproxy-log": lbproxy_roles,
                 "lbproxy-w1": lbproxy_roles, "lbproxy-w2": lbproxy_roles,
                 "haproxy-l7": ["http"], "haproxy-l4": ["tcp", "iperf", "iperf_splice"],
                 "nginx-l7": ["http"], "nginx-stream": ["tcp", "iperf"], "minimal-l7": ["http"]}
        if wants_alt(self.args):
            roles["lbproxy-alt"] = lbproxy_roles
        count = len(names) + sum(len(r) for r in roles.values())
        ports = iter(free_ports(count, self.args.port_base))
        self.ports = {name: next(ports) for name in names}
        backend_ports = {k: self.ports[k] for k in names}
        user = "user root;" if os.geteuid() == 0 else ""

        # backends
        docroot = self.scratch / "docroot"
        docroot.mkdir()
        (docroot / "64k").write_bytes(b"x" * 65536)
        for i in (1, 2, 3):
            port = self.ports[f"backend{i}"]
            if self.backend_kind == "nginx":
                run_dir = self.scratch / f"backend{i}"
                run_dir.mkdir()
                conf = render("backend-nginx.conf", run_dir / "nginx.conf", user_directive=user,
                              run_dir=run_dir, port=port, docroot=docroot)
                argv = ["nginx", "-p", str(run_dir), "-c", str(conf), "-e", str(run_dir / "error.log")]
            else:
                argv = [sys.executable, str(HERE / "backend.py"), str(port)]
            self.background.append(Managed(f"backend{i}", argv, self.logs / f"backend{i}.log",
                                           self.args.backend_cpu))
        if self.backend_kind == "python":
            self.notes.append("nginx is not installed: the backends are benchmarks/backend.py (Python), "
                              "slower than the anchors' nginx backends.")
        if shutil.which("iperf3"):
            self.background.append(Managed(
                "iperf3-server", ["iperf3", "-s", "-p", str(self.ports["iperf_backend"])],
                self.logs / "iperf3-server.log", self.args.backend_cpu))
        for proc in self.background:
            proc.start()
        for proc, port in zip(self.background, [self.ports[n] for n in names], strict=False):  # no iperf3: 3
            wait_port(port, proc)
        for i in (1, 2, 3):
            status, body = http_get(self.ports[f"backend{i}"], "/64k")
            if status != 200 or len(body) != 65536:
                raise BenchError(f"backend{i} answers /64k with {status}, {len(body)} bytes")

        # proxies
        for key, wanted in roles.items():
            sports = {role: next(ports) for role in wanted}
            self.servers[key] = self.make_server(key, sports, backend_ports, user)

    def make_server(self, key: str, ports: dict[str, int], backends: dict[str, int], user: str) -> Server:
        run_dir = self.scratch / key
        run_dir.mkdir()
        if key.startswith("lbproxy"):
            access = ""
            if key == "lbproxy-log":
                access = f"access_log:\n  format: combined\n  path: {self.access_log}\n"
            conf = render("lbproxy.yaml", run_dir / "lbproxy.yaml", access_log=access,
                          admin_port=ports["admin"], http_port=ports["http"], tcp_port=ports["tcp"],
                          iperf_port=ports["iperf"], iperf_splice_port=ports["iperf_splice"], **backends)
            argv = [sys.executable, "-m", "lbproxy", "run", "-c", str(conf), "--log-level", "warning"]
            cpus = self.proxy_cpus
            missing = ""
            if key in ("lbproxy-w1", "lbproxy-w2"):
                argv += ["--workers", key[-1]]
                cpus = self.args.scaling_cpus
                if not self.workers_flag:
                    missing = "not available yet: `lbproxy run --help` lists no --workers"
            src = self.alt_src if key == "lbproxy-alt" else self.lbproxy_src
            if key == "lbproxy-alt" and self.args.alt_python is not None:
                argv[0] = str(self.args.alt_python)
            return Server(key, argv, ports, cpus, env=self.lbproxy_env(src), cwd=src, missing=missing)
        if key == "minimal-l7":
            argv = [sys.executable, str(HERE / "minimal_proxy.py"), str(ports["http"]),
                    *(str(backends[f"backend{i}"]) for i in (1, 2, 3))]
            return Server(key, argv, ports, self.proxy_cpus)
        if key.startswith("haproxy"):
            template = "haproxy-l7.cfg" if key == "haproxy-l7" else "haproxy-l4.cfg"
            maxconn = self.haproxy_maxconn if key == "haproxy-l7" else self.haproxy_l4_maxconn
            conf = render(template, run_dir / "haproxy.cfg", maxconn=maxconn, maxpipes=HAPROXY_MAXPIPES,
                          http_port=ports.get("http", 0), tcp_port=ports.get("tcp", 0),
                          iperf_port=ports.get("iperf", 0), iperf_splice_port=ports.get("iperf_splice", 0),
                          **backends)
            return Server(key, ["haproxy", "-db", "-f", str(conf)], ports, self.proxy_cpus,
                          missing="" if shutil.which("haproxy") else "haproxy is not installed")
        # nginx
        template = "nginx-l7.conf" if key == "nginx-l7" else "nginx-stream.conf"
        module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
        conf = render(template, run_dir / "nginx.conf", user_directive=user, run_dir=run_dir,
                      http_port=ports.get("http", 0), tcp_port=ports.get("tcp", 0),
                      iperf_port=ports.get("iperf", 0),
                      load_stream_module=f"load_module {module};" if module.exists() else "", **backends)
        missing = "" if shutil.which("nginx") else "nginx is not installed"
        return Server(key, ["nginx", "-p", str(run_dir), "-c", str(conf), "-e", str(run_dir / "error.log")],
                      ports, self.proxy_cpus, missing=missing)

    def start(self, key: str) -> Managed:
        server = self.servers[key]
        if server.missing:
            raise BenchError(server.missing)
        proc = Managed(key, server.argv, self.logs / f"{key}.log", server.cpus, env=server.env, cwd=server.cwd)
        proc.start()
        try:
            for port in server.ports.values():
                wait_port(port, proc)
            if key in ("lbproxy-w1", "lbproxy-w2") and self.args.scaling_quota:
                self.confine_workers(proc, int(key[-1]), self.args.scaling_quota)
        except BaseException:
            proc.stop()
            raise
        return proc

    def confine_workers(self, proc: Managed, count: int, share: float) -> None:
        """Hold each of the supervisor's ``count`` workers to ``share`` of a CPU, each in its own
        cgroup (``cpu_quota``): the scaling scenario's stand-in for a core per worker. With one
        worker lbproxy runs no supervisor: the process itself is the worker."""
        workers = [proc.pid]
        deadline = time.monotonic() + 20
        while count > 1 and time.monotonic() < deadline:
            workers = [pid for pid in process_tree(proc.pid)[1:] if b"--worker-channel" in _cmdline(pid)]
            if len(workers) >= count:
                break
            if not proc.alive():
                raise BenchError(f"{proc.name} exited before its workers started:\n{proc.log_tail()}")
            time.sleep(0.1)
        if len(workers) != count:
            raise BenchError(f"{proc.name}: expected {count} worker processes, found {len(workers)}")
        for i, pid in enumerate(workers, 1):
            quota = CpuQuota.create(f"{proc.name}-{i}", share)
            if quota is None:
                raise BenchError("--scaling-quota: no writable cgroup cpu controller (needs root)")
            quota.add(pid)
            self.quotas.append(quota)

    def teardown(self) -> None:
        for proc in list(RUNNING.values()):
            proc.stop()
        for quota in self.quotas:
            quota.remove()
        shutil.rmtree(self.scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# measurements


def measured(env: Env, proc: Managed, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``action`` and add the proxy's CPU seconds, wall time and how busy both cores were."""
    load = parse_cpus(env.load_cpus)
    proxy = parse_cpus(proc_cpus(env, proc))
    probe_proxy, probe_load = speed_probe_ms(proxy[0]), speed_probe_ms(load[0])
    accepts0 = env.backend_accepts()
    all0 = cpu_ticks_by_pid()
    rss0 = tree_rss_kib(proc.pid)
    user0, sys0 = tree_user_system_seconds(proc.pid)
    sleeps0 = tree_sleeps(proc.pid)
    load0, proxy0 = cpu_jiffies(load), cpu_jiffies(proxy)
    t0 = time.perf_counter()
    result = action()
    wall = time.perf_counter() - t0
    user1, sys1 = tree_user_system_seconds(proc.pid)
    result["proxy_sleeps"] = tree_sleeps(proc.pid) - sleeps0
    load1, proxy1 = cpu_jiffies(load), cpu_jiffies(proxy)
    all1 = cpu_ticks_by_pid()
    accepts1 = env.backend_accepts()
    result["rss_kib_before"], result["rss_kib_after"] = rss0, tree_rss_kib(proc.pid)
    if not proc.alive():
        raise BenchError(f"{proc.name} died during the run (exit {proc.proc.returncode if proc.proc else '?'}):\n"
                         f"{proc.log_tail()}")
    result["proxy_cpu_s"] = (user1 - user0) + (sys1 - sys0)
    result["proxy_user_s"], result["proxy_sys_s"] = user1 - user0, sys1 - sys0
    result["wall_s"] = wall
    result["proxy_busy"] = result["proxy_cpu_s"] / wall
    result["load_core_busy"] = _share(load0, load1, "busy")
    result["proxy_core_busy"] = _share(proxy0, proxy1, "busy")
    result["proxy_core_softirq"] = _share(proxy0, proxy1, "softirq")
    result["proxy_core_steal"] = _share(proxy0, proxy1, "steal")
    result["load_core_steal"] = _share(load0, load1, "steal")
    others = foreign_cpu(all0, all1)
    result["foreign_cpu_s"] = sum(others.values())
    result["foreign_cpu_by_command"] = others
    result["probe_proxy_ms"] = probe_proxy
    result["probe_load_ms"] = probe_load
    if accepts0 is not None and accepts1 is not None:
        # new connections the backends accepted, less the 3 of the status reads after the run
        result["upstream_conns"] = max(0, accepts1 - accepts0 - 3)
    return result


def proc_cpus(env: Env, proc: Managed) -> str:
    return env.servers[proc.name].cpus if proc.name in env.servers else env.proxy_cpus


def _share(before: dict[str, int], after: dict[str, int], what: str) -> float:
    total = after["total"] - before["total"]
    return (after[what] - before[what]) / total if total else 0.0


def proxy_cost_per_request(raw: dict[str, Any], requests: int) -> dict[str, float]:
    """``measured``'s proxy CPU (total, user, system; µs) and sleeps, per request."""
    out = {"cpu_us": raw["proxy_cpu_s"] * 1e6 / requests, "cpu_user_us": raw["proxy_user_s"] * 1e6 / requests,
           "cpu_sys_us": raw["proxy_sys_s"] * 1e6 / requests}
    if "proxy_sleeps" in raw:
        out["sleeps_per_req"] = raw["proxy_sleeps"] / requests
    return out


def wrk_metrics(raw: dict[str, Any], close: bool) -> dict[str, Any]:
    requests = raw["requests"]
    if requests <= 0:
        raise BenchError(f"no requests completed: {raw}")
    seconds = raw["duration_us"] / 1e6
    out = dict(raw)
    out["rps"] = requests / seconds
    out["p50_ms"] = raw["p50_us"] / 1000
    out["p99_ms"] = raw["p99_us"] / 1000
    out.update(proxy_cost_per_request(raw, requests))
    out["gbps"] = raw["bytes"] / seconds / GB
    out["cpu_s_per_gb"] = raw["proxy_cpu_s"] / (raw["bytes"] / GB)
    if close:
        out["conn_per_s"] = out["rps"]
    if "upstream_conns" in raw:
        out["upstream_conns_per_req"] = raw["upstream_conns"] / requests
    out["errors"] = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return out


def rate_metrics(raw: dict[str, Any]) -> dict[str, Any]:
    """Per-connection figures of a ``run_h2load_rate`` run (one request per connection);
    ``sustained`` is the rate carried over the rate asked."""
    requests = raw["requests"]
    if requests <= 0:
        raise BenchError(f"no requests completed: {raw}")
    out = dict(raw)
    out["rps"] = out["conn_per_s"] = requests / (raw["duration_us"] / 1e6)
    out["sustained"] = out["rps"] / raw["rate"]
    out.update(proxy_cost_per_request(raw, requests))
    return out


SUSTAINED = 0.97  # a rate run carrying less than this share of the rate asked was saturated


class Runner:
    def __init__(self, env: Env, args: argparse.Namespace) -> None:
        self.env = env
        self.args = args
        self.duration: float = args.duration
        self.rounds: int = args.rounds
        self.results: dict[str, Any] = {}

    def log(self, text: str) -> None:
        print(text, flush=True)

    def run_scenario(self, sc: Scenario) -> dict[str, Any]:
        rec: dict[str, Any] = {"title": sc.title, "kind": sc.kind, "systems": {}, "notes": []}
        if sc.note:
            rec["notes"].append(sc.note)
        self.results[sc.key] = rec
        self.log(f"\n== {sc.key}: {sc.title}")
        systems = []
        for system in sc.systems:
            server = self.env.servers[system.server]
            entry: dict[str, Any] = {"runs": [], "errors": []}
            rec["systems"][system.label] = entry
            if server.missing:
                entry["skipped"] = server.missing
                self.log(f"   {system.label}: skipped ({server.missing})")
            else:
                systems.append(system)
        if sc.kind == "iperf" and not shutil.which("iperf3"):
            rec["skipped"] = "iperf3 is not installed"
            self.log("   skipped: iperf3 is not installed")
            return rec
        if sc.kind == "rate" and not shutil.which("h2load"):
            rec["skipped"] = "h2load is not installed (apt-get install -y nghttp2-client)"
            self.log(f"   skipped: {rec['skipped']}")
            return rec
        if not systems:
            rec["skipped"] = "; ".join({e.get("skipped", "") for e in rec["systems"].values()})
            return rec
        if sc.kind == "idle":
            self._run_idle(sc, systems, rec)
        else:
            self._run_load(sc, systems, rec)
        for entry in rec["systems"].values():
            entry["summary"] = summarize(entry["runs"])
        return rec

    # wrk / iperf scenarios: the proxies run for the whole scenario
    def _run_load(self, sc: Scenario, systems: list[System], rec: dict[str, Any]) -> None:
        procs: dict[str, Managed] = {}
        dead: set[str] = set()
        try:
            fill = sorted(set(parse_cpus(self.args.scaling_cpus)) - set(parse_cpus(self.env.load_cpus)))
            if sc.kind == "scaling" and self.args.scaling_quota and fill:
                # keeps the quota-held workers' CPU from idling (cpu_quota.IDLE_FILLER); never on
                # the load core, whose busy share says whether the load generator was the limit
                for cpu in fill:
                    filler = Managed(f"idle-filler-{cpu}", [sys.executable, "-c", IDLE_FILLER],
                                     self.env.logs / "idle-filler.log", str(cpu))
                    filler.start()
                    procs[filler.name] = filler
            for system in systems:
                if system.server not in procs:
                    try:
                        procs[system.server] = self.env.start(system.server)
                    except BenchError as exc:
                        self._fail(rec, system, f"start: {exc}")
                        dead.add(system.label)
            for system in systems:  # warm-up: upstream pools, caches, the interpreter
                if system.label not in dead:
                    try:
                        warm = self._measure(sc, system, procs[system.server], self.args.warmup)
                        rec["systems"][system.label]["warmup"] = warm
                    except BenchError as exc:
                        self._fail(rec, system, f"warm-up: {exc}")
                        dead.add(system.label)
            for rnd in range(self.rounds):
                order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
                for system in order:
                    if system.label in dead:
                        continue
                    try:
                        run = self._measure_steady(sc, system, procs[system.server])
                    except BenchError as exc:
                        self._fail(rec, system, f"round {rnd + 1}: {exc}")
                        dead.add(system.label)
                        continue
                    run["round"] = rnd + 1
                    rec["systems"][system.label]["runs"].append(run)
                    self.log(f"   round {rnd + 1} {system.label:<18} {describe(sc, run)}")
            for system in systems:  # what lbproxy itself counted (warm-up included)
                server = self.env.servers[system.server]
                if "admin" in server.ports and system.server in procs and procs[system.server].alive():
                    rec.setdefault("lbproxy_metrics", {})[system.label] = lbproxy_metrics(server.ports["admin"])
        finally:
            for proc in procs.values():
                proc.stop()

    def _measure_steady(self, sc: Scenario, system: System, proc: Managed) -> dict[str, Any]:
        """``_measure`` for one round, measured again (at most ``--steal-retries`` times) while
        the hypervisor took more than ``--max-steal`` of the proxy or load core. A robbed run
        measures whoever was robbed that round, not the proxy: a proxy that lost a third of
        its core reads a third slower, and its ratio with it. The run kept says what it cost
        (``steal_retried``: the steal of each run dropped), and so does the table's notes."""
        dropped: list[float] = []
        while True:
            run = self._measure(sc, system, proc, self.duration)
            steal = max(run["proxy_core_steal"], run["load_core_steal"])
            if steal <= self.args.max_steal or len(dropped) >= self.args.steal_retries:
                break
            dropped.append(round(steal, 3))
            self.log(f"   (dropped: {system.label} lost {steal * 100:.0f}% of a core to steal; measuring again)")
        if dropped:
            run["steal_retried"] = dropped
        return run

    def _measure(self, sc: Scenario, system: System, proc: Managed, duration: float) -> dict[str, Any]:
        port = self.env.servers[system.server].ports[system.role]
        if sc.kind == "iperf":
            raw = measured(self.env, proc, lambda: run_iperf(self.env, port, duration, sc.streams))
            raw["gbps"] = raw["bytes"] / raw["seconds"] / GB
            raw["cpu_s_per_gb"] = raw["proxy_cpu_s"] / (raw["bytes"] / GB)
            return raw
        if sc.kind == "rate":
            out = rate_metrics(measured(self.env, proc, lambda: run_h2load_rate(self.env, port, duration, sc.rate)))
            time.sleep(0.3)
            return out
        raw = measured(self.env, proc, lambda: run_wrk(self.env, port, duration, sc.connections, sc.path, sc.close,
                                                       sc.fields))
        out = wrk_metrics(raw, sc.close)
        if system.server == "lbproxy-log":
            out["access_log_bytes"] = self.env.access_log.stat().st_size if self.env.access_log.exists() else 0
            if self.env.access_log.exists():
                os.truncate(self.env.access_log, 0)  # opened O_APPEND: later lines go to the new end
        time.sleep(0.3)
        return out

    # idle connections: a fresh proxy per system per round, so freed memory isn't reused
    def _run_idle(self, sc: Scenario, systems: list[System], rec: dict[str, Any]) -> None:
        dead: set[str] = set()
        for rnd in range(self.rounds):
            order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
            for system in order:
                if system.label in dead:
                    continue
                count = sc.idle
                if system.server == "haproxy-l7":
                    count = min(count, self.env.haproxy_maxconn - ACTIVE_CLIENTS - 50)
                elif system.server == "haproxy-l4":
                    count = min(count, self.env.haproxy_l4_maxconn - ACTIVE_CLIENTS - 50)
                try:
                    run = self._idle_once(sc, system, count)
                except BenchError as exc:
                    self._fail(rec, system, f"round {rnd + 1}: {exc}")
                    dead.add(system.label)
                    continue
                run["round"] = rnd + 1
                rec["systems"][system.label]["runs"].append(run)
                self.log(f"   round {rnd + 1} {system.label:<18} {describe(sc, run)}")

    def _idle_once(self, sc: Scenario, system: System, count: int) -> dict[str, Any]:
        """Fresh proxy: warm-up, active clients alone, then with ``count`` idle connections
        (memory read before and after opening them), then alone again after closing them."""
        port = self.env.servers[system.server].ports[system.role]
        proc = self.env.start(system.server)
        socks: list[socket.socket] = []
        try:
            self._wrk(proc, port, self.args.warmup)
            before = self._wrk(proc, port, self.duration)
            time.sleep(0.5)
            rss0 = tree_rss_kib(proc.pid)
            t0 = time.perf_counter()
            try:
                socks = open_idle(port, count)
            except OSError as exc:
                raise BenchError(f"opening idle connection {len(socks) + 1}: {exc}") from None
            open_s = time.perf_counter() - t0
            time.sleep(1.0)
            if not proc.alive():
                raise BenchError(f"{proc.name} died with {count} idle connections:\n{proc.log_tail()}")
            rss1 = tree_rss_kib(proc.pid)
            loaded = self._wrk(proc, port, self.duration)
            dropped = sum(1 for s in socks if _peer_closed(s))
            close_all(socks)
            time.sleep(1.0)
            after = self._wrk(proc, port, self.duration)
        finally:
            close_all(socks)
            proc.stop()
        rps_base = (before["rps"] + after["rps"]) / 2
        out = dict(loaded)
        out.update({
            "idle": count, "open_s": open_s, "rss_before_kib": rss0, "rss_idle_kib": rss1,
            # KB as /proc counts them (1024 bytes), like the anchors' figures
            "kb_per_conn": (rss1 - rss0) / count, "idle_dropped": dropped,
            "rps_before": before["rps"], "rps_after": after["rps"], "rps_base": rps_base,
            "idle_slowdown": loaded["rps"] / rps_base,
            "cpu_us_base": (before["cpu_us"] + after["cpu_us"]) / 2,
            "p99_ms_base": (before["p99_ms"] + after["p99_ms"]) / 2,
            "errors": before["errors"] + loaded["errors"] + after["errors"],
        })
        return out

    def _wrk(self, proc: Managed, port: int, duration: float) -> dict[str, Any]:
        raw = measured(self.env, proc, lambda: run_wrk(self.env, port, duration, ACTIVE_CLIENTS))
        time.sleep(0.3)
        return wrk_metrics(raw, False)

    def _fail(self, rec: dict[str, Any], system: System, message: str) -> None:
        rec["systems"][system.label]["errors"].append(message)
        self.log(f"   !! {system.label}: {message}")

    # strace -c: system calls per request, keep-alive, each proxy
    def syscalls(self, seconds: float) -> dict[str, Any]:
        self.log(f"\n== syscalls: strace -c during {seconds:g} s of keep-alive load, per proxy")
        if not shutil.which("strace"):
            return {"skipped": "strace is not installed (apt-get install -y strace)"}
        out: dict[str, Any] = {}
        for label, key, role in (("L7 lbproxy", "lbproxy", "http"), ("L7 haproxy", "haproxy-l7", "http"),
                                 ("L7 nginx", "nginx-l7", "http"), ("L4 lbproxy", "lbproxy", "tcp"),
                                 ("L4 haproxy", "haproxy-l4", "tcp"), ("L4 nginx", "nginx-stream", "tcp")):
            if self.env.servers[key].missing:
                continue
            port = self.env.servers[key].ports[role]
            try:
                proc = self.env.start(key)
            except BenchError as exc:
                out[label] = {"error": str(exc)}
                continue
            trace = self.env.out_dir / f"strace-{label.replace(' ', '-')}.txt"
            try:
                self._wrk(proc, port, self.args.warmup)
                argv = ["taskset", "-c", self.env.load_cpus, "strace", "-c", "-f", "-o", str(trace)]
                for pid in process_tree(proc.pid):
                    argv += ["-p", str(pid)]
                strace = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                try:
                    time.sleep(0.5)
                    wrk = run_wrk(self.env, port, seconds, ACTIVE_CLIENTS)
                finally:
                    strace.send_signal(signal.SIGINT)
                    strace.wait(30)
                calls = parse_strace_summary(trace.read_text()) if trace.exists() else {}
                requests = wrk["requests"]
                out[label] = {"requests": requests, "per_request": {k: v / requests for k, v in sorted(
                    calls.items(), key=lambda kv: -kv[1])}, "total_per_request": sum(calls.values()) / requests}
                self.log(f"   {label:<11} {out[label]['total_per_request']:.2f} syscalls/request "
                         f"({requests:,} requests under strace)")
            except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
                out[label] = {"error": str(exc)}
            finally:
                proc.stop()
        return out

    # perf: where each proxy's CPU goes, kernel included, under L7 keep-alive or new-connection load
    def perf(self, seconds: float, close: bool = False) -> dict[str, Any]:
        """Sample each L7 proxy with ``perf record -e cpu-clock`` (kernel and user, no hardware
        counters needed) during keep-alive load (``close``: a new connection per request): µs
        per request by symbol, so the time lbproxy spends beyond haproxy's can be read function
        by function."""
        what = "new connection per request" if close else "keep-alive"
        self.log(f"\n== perf: perf record -e cpu-clock during {seconds:g} s of L7 {what}, per proxy")
        if not shutil.which("perf"):
            return {"skipped": "perf is not installed (apt-get install -y linux-perf)"}
        out: dict[str, Any] = {}
        for label, key in (("lbproxy", "lbproxy"), ("haproxy", "haproxy-l7"), ("nginx", "nginx-l7"),
                           ("minimal", "minimal-l7"), ("lbproxy-alt", "lbproxy-alt")):
            if key not in self.env.servers or self.env.servers[key].missing:
                continue
            port = self.env.servers[key].ports["http"]
            data = self.env.out_dir / f"perf-{label}.data"
            try:
                proc = self.env.start(key)
            except BenchError as exc:
                out[label] = {"error": str(exc)}
                continue
            try:
                self._wrk(proc, port, self.args.warmup)
                argv = ["taskset", "-c", self.env.load_cpus, "perf", "record", "-q", "-g", "-e", "cpu-clock",
                        "-F", "2000", "-o", str(data), "-p", ",".join(map(str, process_tree(proc.pid)))]
                recorder = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
                try:
                    time.sleep(0.5)
                    wrk = measured(self.env, proc, lambda: run_wrk(self.env, port, seconds, ACTIVE_CLIENTS,
                                                                   close=close))
                finally:
                    recorder.send_signal(signal.SIGINT)
                    recorder.wait(60)
                report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                                         "--sort", "dso,sym", "-F", "overhead,period,dso,sym"],
                                        capture_output=True, text=True, timeout=120)
                out[label] = summarize_perf(report.stdout, wrk["requests"])
                # /proc's figures for the same run (what the targets use), beside perf's samples
                out[label]["proc_user_us"] = wrk["proxy_user_s"] * 1e6 / max(wrk["requests"], 1)
                out[label]["proc_sys_us"] = wrk["proxy_sys_s"] * 1e6 / max(wrk["requests"], 1)
                out[label]["file"] = str(data)
                self.log(f"   {label:<8} {out[label]['us_per_request']:.1f} µs/request sampled "
                         f"(kernel {out[label]['kernel_us']:.1f}); /proc: user {out[label]['proc_user_us']:.1f}, "
                         f"system {out[label]['proc_sys_us']:.1f}")
            except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
                out[label] = {"error": str(exc)}
            finally:
                proc.stop()
        return out

    # py-spy on lbproxy during L7 keep-alive
    def profile(self, seconds: float, native: bool, close: bool = False) -> dict[str, Any]:
        """py-spy record of lbproxy under L7 keep-alive load (``close``: a new connection per
        request), written as folded stacks and summarized by function."""
        what = "new connection per request" if close else "keep-alive"
        self.log(f"\n== profile: py-spy record on lbproxy, L7 {what}, {seconds:g} s")
        if not shutil.which("py-spy"):
            return {"skipped": "py-spy is not installed (pip install py-spy)"}
        port = self.env.servers["lbproxy"].ports["http"]
        proc = self.env.start("lbproxy")
        folded = self.env.out_dir / (("pyspy-native" if native else "pyspy") + ("-close" if close else "") + ".txt")
        try:
            self._wrk(proc, port, self.args.warmup)
            unprofiled = wrk_metrics(measured(self.env, proc, lambda: run_wrk(
                self.env, port, self.duration, ACTIVE_CLIENTS, close=close)), False)
            holder: dict[str, Any] = {}
            close_header = ["-H", "Connection: close"] if close else []

            def load_and_record() -> dict[str, Any]:
                wrk = subprocess.Popen(
                    ["taskset", "-c", self.env.load_cpus, "wrk", "-t1", f"-c{ACTIVE_CLIENTS}",
                     f"-d{wrk_seconds(seconds + 3)}s", "-s", str(REPORT_LUA), "-H", f"Host: {HOST_HEADER}",
                     *close_header, f"http://127.0.0.1:{port}/"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                try:
                    time.sleep(1)
                    argv = ["taskset", "-c", self.env.load_cpus, "py-spy", "record", "-p", str(proc.pid),
                            "-d", f"{seconds:g}", "-r", "200", "--function", "-f", "raw", "-o", str(folded)]
                    if native:
                        argv.append("--native")
                    spy = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
                    holder["py-spy"] = (spy.stdout + spy.stderr).strip()[-2000:]
                finally:
                    out, _ = wrk.communicate(timeout=seconds + 60)
                match = re.search(r"^WRKJSON (.*)$", out, re.M)
                if not match:
                    raise BenchError(f"wrk failed during profiling: {out}")
                data: dict[str, Any] = json.loads(match.group(1))
                return data

            raw = measured(self.env, proc, load_and_record)
        finally:
            proc.stop()
        if not folded.exists():
            return {"error": holder.get("py-spy", "py-spy wrote nothing")}
        prof = summarize_folded(folded.read_text())
        prof["file"] = str(folded.relative_to(ROOT)) if folded.is_relative_to(ROOT) else str(folded)
        prof["native"] = native
        prof["rps_unprofiled"] = unprofiled["rps"]
        prof["cpu_us_unprofiled"] = unprofiled["cpu_us"]
        prof["rps_profiled"] = raw["requests"] / (raw["duration_us"] / 1e6)
        self.log(f"   {prof['samples']} samples; unprofiled {unprofiled['rps']:,.0f} req/s, "
                 f"while profiled {prof['rps_profiled']:,.0f} req/s")
        return prof


def summarize_perf(text: str, requests: int, top: int = 25) -> dict[str, Any]:
    """µs per request by (DSO, symbol) from ``perf report --stdio -F overhead,period,dso,sym``
    output of a cpu-clock recording (whose period is nanoseconds of CPU)."""
    rows: list[tuple[float, str, str]] = []
    for line in text.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+(\d+)\s+(\S+)\s+\[([k.])\]\s+(.*)$", line)
        if match:
            dso = "kernel" if match.group(4) == "k" else match.group(3)
            rows.append((int(match.group(2)) / 1e3 / max(requests, 1), dso, match.group(5).strip()))
    rows.sort(key=lambda row: -row[0])
    by_dso: dict[str, float] = {}
    for us, dso, _ in rows:
        by_dso[dso] = by_dso.get(dso, 0.0) + us
    return {"requests": requests, "us_per_request": sum(r[0] for r in rows),
            "kernel_us": by_dso.get("kernel", 0.0),
            "by_dso": dict(sorted(by_dso.items(), key=lambda kv: -kv[1])),
            "top": [{"us": round(us, 3), "dso": dso, "symbol": sym} for us, dso, sym in rows[:top]]}


def render_perf(data: dict[str, Any]) -> str:
    if "skipped" in data:
        return f"perf: {data['skipped']}"
    lines = ["Where the CPU goes per L7 keep-alive request (perf record -e cpu-clock; µs/request):", ""]
    for label, row in data.items():
        if "error" in row:
            lines.append(f"- {label}: error: {row['error'].splitlines()[0]}")
            continue
        dsos = ", ".join(f"{dso} {us:.2f}" for dso, us in list(row["by_dso"].items())[:5])
        lines.append(f"- {label}: {row['us_per_request']:.1f} µs ({dsos}); /proc: user "
                     f"{row['proc_user_us']:.1f}, system {row['proc_sys_us']:.1f}")
        for item in row["top"][:12]:
            lines.append(f"    - {item['us']:.2f} {item['dso']} {item['symbol']}")
    return "\n".join(lines)


def parse_strace_summary(text: str) -> dict[str, int]:
    """syscall -> calls from ``strace -c`` output."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) in (5, 6) and parts[0].replace(".", "").isdigit() and parts[-1] != "total":
            calls[parts[-1]] = calls.get(parts[-1], 0) + int(parts[3])
    return calls


def describe(sc: Scenario, run: dict[str, Any]) -> str:
    busy = (f"proxy {run['proxy_busy'] * 100:.0f}% (its core {run['proxy_core_busy'] * 100:.0f}%, softirq "
            f"{run.get('proxy_core_softirq', 0) * 100:.0f}%, steal {run.get('proxy_core_steal', 0) * 100:.0f}%), "
            f"load core {run['load_core_busy'] * 100:.0f}%")
    if sc.kind == "iperf":
        return f"{run['gbps']:.2f} GB/s, {run['cpu_s_per_gb']:.2f} CPU-s/GB, {busy}"
    errors = f", {run['errors']:,} ERRORS" if run.get("errors") else ""
    if sc.kind == "rate":
        return (f"{run['conn_per_s']:,.0f} conn/s of {run['rate']:,}, mean {run.get('mean_ms', 0):.2f} ms, "
                f"{run['cpu_us']:.1f} µs/conn, {busy}{errors}")
    if sc.kind == "idle":
        return (f"{run['idle']:,} idle: {run['kb_per_conn']:.2f} KB/conn (opened in {run['open_s']:.1f} s); "
                f"req/s {run['rps_before']:,.0f} without, {run['rps']:,.0f} with, {run['rps_after']:,.0f} without; "
                f"{run['cpu_us_base']:.1f} -> {run['cpu_us']:.1f} µs/req{errors}")
    return (f"{run['rps']:,.0f} req/s, p99 {run['p99_ms']:.2f} ms, {run['cpu_us']:.1f} µs/req, {busy}{errors}")


def _peer_closed(sock: socket.socket) -> bool:
    """True when the proxy closed this idle connection (EOF or reset pending)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def lbproxy_metrics(admin_port: int) -> dict[str, Any]:
    """Totals from lbproxy's /metrics: requests by route and status (the benchmark should hit only
    the last route, with 200s), upstream connects, rejected client connections, upstream errors."""
    try:
        status, body = http_get(admin_port, "/metrics", host="127.0.0.1")
    except OSError as exc:
        return {"error": str(exc)}
    out: dict[str, Any] = {"requests": {}, "upstream_connects": 0.0, "rejected": 0.0, "upstream_errors": {}}
    for line in body.decode().splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name_labels, value_text = line.rsplit(" ", 1)
        value = float(value_text)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', name_labels))
        name = name_labels.split("{", 1)[0]
        if name == "lbproxy_requests_total":
            key = f"{labels.get('route')} {labels.get('code')}"
            out["requests"][key] = out["requests"].get(key, 0) + value
        elif name == "lbproxy_upstream_connect_duration_seconds_count":
            out["upstream_connects"] += value
        elif name == "lbproxy_connections_rejected_total":
            out["rejected"] += value
        elif name == "lbproxy_upstream_errors_total" and value:
            kind = labels.get("kind", "?")
            out["upstream_errors"][kind] = out["upstream_errors"].get(kind, 0) + value
    return out


def summarize_folded(text: str, top: int = 15) -> dict[str, Any]:
    """Own (leaf) and total (anywhere on the stack) samples per function from py-spy raw output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return {
        "samples": samples,
        "top_own": [{"function": f, "own": n, "own_pct": 100 * n / samples,
                     "total_pct": 100 * total[f] / samples} for f, n in ranked] if samples else [],
        "top_total": [{"function": f, "total_pct": 100 * n / samples}
                      for f, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]] if samples else [],
    }


# --------------------------------------------------------------------------------------------
# summaries, ratios, targets, table


METRICS = ["rps", "p50_ms", "p99_ms", "cpu_us", "cpu_user_us", "cpu_sys_us", "sleeps_per_req", "gbps", "cpu_s_per_gb", "conn_per_s",
           "kb_per_conn", "idle", "rps_base", "idle_slowdown", "cpu_us_base", "upstream_conns_per_req", "errors",
           "proxy_busy", "proxy_core_busy", "proxy_core_softirq", "proxy_core_steal", "load_core_busy",
           "load_core_steal", "foreign_cpu_s", "probe_proxy_ms", "probe_load_ms"]


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for metric in METRICS:
        values = [r[metric] for r in runs if r.get(metric) is not None]
        if values:
            out[metric] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def med(results: dict[str, Any], scenario: str, system: str, metric: str) -> float | None:
    try:
        value = results[scenario]["systems"][system]["summary"][metric]["median"]
        return float(value)
    except (KeyError, TypeError):
        return None


def ratio(results: dict[str, Any], scenario: str, metric: str, system: str = "lbproxy",
          reference: str = "haproxy") -> float | None:
    a, b = med(results, scenario, system, metric), med(results, scenario, reference, metric)
    return a / b if a is not None and b else None


def paired_ratios(results: dict[str, Any], scenario: str, metric: str, system: str = "lbproxy",
                  reference: str = "haproxy") -> list[float]:
    """``system``'s figure over ``reference``'s, round by round: the two ran minutes apart at
    most, so a slow patch of the machine hits both, which the ratio of medians can't promise."""
    try:
        runs = results[scenario]["systems"]
        ours = {r["round"]: r.get(metric) for r in runs[system]["runs"]}
        theirs = {r["round"]: r.get(metric) for r in runs[reference]["runs"]}
    except KeyError:
        return []
    return [ours[k] / theirs[k] for k in sorted(ours) if ours[k] is not None and theirs.get(k)]


def paired_detail(results: dict[str, Any], scenario: str, metric: str, system: str = "lbproxy",
                  reference: str = "haproxy") -> str:
    values = paired_ratios(results, scenario, metric, system, reference)
    if len(values) < 2:
        return ""
    return (f"round by round {statistics.median(values):.2f}x (median; {min(values):.2f}-{max(values):.2f}, "
            f"{len(values)} rounds)")


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    at_most: bool  # True: value <= limit is met
    unit: str = "x"
    detail: str = ""

    @property
    def status(self) -> str:
        if self.value is None:
            return "not measured"
        ok = self.value <= self.limit if self.at_most else self.value >= self.limit
        return "met" if ok else "MISSED"

    def by(self) -> str:
        if self.value is None or self.status == "met":
            return ""
        return f"{abs(self.value / self.limit - 1) * 100:.0f}% {'over' if self.at_most else 'short'}"


def load_bound_detail(results: dict[str, Any], scenario: str) -> str:
    """Says so when haproxy's requests/s were the load side's limit rather than haproxy's."""
    load = med(results, scenario, "haproxy", "load_core_busy")
    proxy = med(results, scenario, "haproxy", "proxy_busy")
    if load is None or proxy is None or load < 0.95:
        return ""
    return (f"haproxy was load-generator-bound (load core {load * 100:.0f}% busy, haproxy {proxy * 100:.0f}% of "
            "its core): its capacity, and the shortfall, are larger than this ratio shows")


def targets(results: dict[str, Any], env: Env) -> list[Target]:
    def both(*parts: str) -> str:
        return "; ".join(p for p in parts if p)

    out = [
        Target("L7 keep-alive: CPU/request vs haproxy", ratio(results, "l7-keepalive", "cpu_us"), 1.5, True,
               detail=paired_detail(results, "l7-keepalive", "cpu_us")),
        Target("L7 keep-alive: requests/s vs haproxy", ratio(results, "l7-keepalive", "rps"), 0.7, False,
               detail=both(paired_detail(results, "l7-keepalive", "rps"), load_bound_detail(results, "l7-keepalive"))),
        Target("L7 new connection: CPU/connection vs haproxy", ratio(results, "l7-newconn", "cpu_us"), 1.5, True,
               detail=both(paired_detail(results, "l7-newconn", "cpu_us"), rate_detail(results))),
        Target("L4 keep-alive: CPU/request vs haproxy tcp", ratio(results, "l4-keepalive", "cpu_us"), 1.3, True,
               detail=paired_detail(results, "l4-keepalive", "cpu_us")),
    ]
    for key, streams in (("l4-bulk-1", "1 stream"), ("l4-bulk-4", "4 streams")):
        # like for like: lbproxy's tcp listener with `splice: true` against haproxy's splice frontend
        out.append(Target(f"L4 bulk {streams}: GB/s vs haproxy splice (lbproxy splice: true)",
                          ratio(results, key, "gbps", "lbproxy-splice", "haproxy-splice"), 1.0, False,
                          detail=paired_detail(results, key, "gbps", "lbproxy-splice", "haproxy-splice")))
        out.append(Target(f"L4 bulk {streams}: CPU-s/GB vs haproxy splice (lbproxy splice: true)",
                          ratio(results, key, "cpu_s_per_gb", "lbproxy-splice", "haproxy-splice"), 1.0, True,
                          detail=paired_detail(results, key, "cpu_s_per_gb", "lbproxy-splice", "haproxy-splice")))
    out.append(Target("Idle L7: KB per idle connection (absolute; KB as /proc's kB, 1024 B)",
                      med(results, "idle-l7", "lbproxy", "kb_per_conn"), 4.0, True, unit=" KB"))
    out.append(Target("Idle L7: req/s with idle connections / without",
                      med(results, "idle-l7", "lbproxy", "idle_slowdown"), IDLE_SLOWDOWN_LIMIT, False,
                      detail="'don't slow' read as >= 0.9x (run-to-run noise is ~5%)"))
    scaling = ratio(results, "scaling", "rps", "lbproxy 2 workers", "lbproxy 1 worker")
    detail = "" if env.workers_flag else "not available yet (no --workers)"
    shared = set(parse_cpus(env.args.scaling_cpus)) & set(parse_cpus(env.load_cpus))
    load = med(results, "scaling", "lbproxy 2 workers", "load_core_busy")
    if env.workers_flag and env.args.scaling_quota and scaling is not None and load is not None:
        busy = med(results, "scaling", "lbproxy 2 workers", "proxy_busy")
        limit = "not the limit" if load < LOAD_BOUND else "so the load generator may be a limit: inconclusive"
        detail = both(paired_detail(results, "scaling", "rps", "lbproxy 2 workers", "lbproxy 1 worker"),
                      f"each worker held to {env.args.scaling_quota:g} of a CPU by a cgroup quota, on CPU "
                      f"{env.args.scaling_cpus} (2 workers used {busy:.2f} CPU); load core {load * 100:.0f}% busy "
                      f"with 2 workers, {limit}")
    elif env.workers_flag and shared and scaling is not None:
        detail = (f"inconclusive here: the workers share CPU {','.join(map(str, sorted(shared)))} with wrk and the "
                  f"backends (load core {load * 100:.0f}% busy with 2 workers), so the load generator is a limit; "
                  "needs a machine with 3+ cores (--scaling-cpus)" if load is not None else "")
    out.append(Target("2 workers / 1 worker requests/s", scaling, 1.7, False, detail=detail))
    return out


def fmt_number(value: float, kind: str) -> str:
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "pct":
        return f"{value * 100:.0f}%"
    return f"{value:.{kind}f}"


def cell(summary: dict[str, dict[str, float]], metric: str, kind: str) -> str:
    s = summary.get(metric)
    if not s:
        return ""
    text = fmt_number(s["median"], kind)
    if s["min"] != s["max"]:
        text += f" ({fmt_number(s['min'], kind)}–{fmt_number(s['max'], kind)})"
    return text


COLUMNS = [("req/s", "rps", "int"), ("p50 ms", "p50_ms", "2"), ("p99 ms", "p99_ms", "2"),
           ("CPU µs/req", "cpu_us", "1"), ("GB/s", "gbps", "2"), ("CPU-s/GB", "cpu_s_per_gb", "2"),
           ("conn/s", "conn_per_s", "int"), ("KB/idle conn", "kb_per_conn", "2")]


def ratio_text(results: dict[str, Any], key: str, kind: str, label: str) -> str:
    rec = results[key]
    parts = []
    if kind == "idle":
        s = rec["systems"][label].get("summary", {})
        if "rps_base" in s:
            parts.append(f"without idle {s['rps_base']['median']:,.0f} req/s, {s['cpu_us_base']['median']:.1f} µs; "
                         f"with/without {s['idle_slowdown']['median']:.2f}×")
        if "idle" in s and s["idle"]["median"] != 0:
            parts.append(f"N={s['idle']['median']:,.0f}")
    if (label.startswith("lbproxy") or label == "minimal") and "haproxy" in rec["systems"] and kind != "scaling":
        ref_metrics = {"wrk": [("cpu_us", "CPU"), ("rps", "req/s")], "rate": [("cpu_us", "CPU")],
                       "iperf": [("gbps", "GB/s"), ("cpu_s_per_gb", "CPU/GB")],
                       "idle": [("kb_per_conn", "KB")]}[kind]
        if key == "l7-64k":
            ref_metrics = [("cpu_us", "CPU"), ("gbps", "GB/s")]
        for ref in ("haproxy", "haproxy-splice") if kind == "iperf" else ("haproxy",):
            texts = [f"{name} {r:.2f}×" for metric, name in ref_metrics
                     if (r := ratio(results, key, metric, label, ref)) is not None]
            if texts:
                parts.append(f"vs {ref}: " + ", ".join(texts))
    if kind == "scaling" and label == "lbproxy 2 workers":
        r = ratio(results, key, "rps", label, "lbproxy 1 worker")
        if r is not None:
            parts.append(f"{r:.2f}× 1 worker")
    return "; ".join(parts)


def render_table(results: dict[str, Any]) -> str:
    header = ["scenario", "system"] + [c[0] for c in COLUMNS] + ["busy proxy/load core", "ratios and notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, rec in results.items():
        if rec.get("skipped"):
            lines.append(f"| {key} | — | " + " | ".join([""] * len(COLUMNS)) + f" | | {rec['skipped']} |")
            continue
        for label, entry in rec["systems"].items():
            summary = entry.get("summary", {})
            if entry.get("skipped"):
                cells = [""] * len(COLUMNS) + ["", entry["skipped"]]
            elif not summary:
                cells = [""] * len(COLUMNS) + ["", "FAILED: " + "; ".join(e.splitlines()[0] for e in entry["errors"])]
            else:
                shown = {"iperf": ("gbps", "cpu_s_per_gb"), "rate": ("rps", "cpu_us", "conn_per_s"),
                         "idle": ("rps", "p50_ms", "p99_ms", "cpu_us", "kb_per_conn")}.get(rec["kind"])
                cols = [c for c in COLUMNS if shown is None or c[1] in shown]
                cells = [cell(summary, m, k) if (h, m, k) in cols else "" for h, m, k in COLUMNS]
                if rec["kind"] in ("wrk", "scaling") and key != "l7-64k":
                    cells[4] = cells[5] = ""  # GB/s of 12-byte responses says nothing
                busy = ""
                if "proxy_core_busy" in summary and "load_core_busy" in summary:
                    busy = (f"{summary['proxy_core_busy']['median'] * 100:.0f}% / "
                            f"{summary['load_core_busy']['median'] * 100:.0f}%")
                note = ratio_text(results, key, rec["kind"], label)
                if "cpu_user_us" in summary and rec["kind"] in ("wrk", "rate", "scaling"):
                    note = (f"user/sys {summary['cpu_user_us']['median']:.1f}/{summary['cpu_sys_us']['median']:.1f} µs"
                            + (f", sleeps/req {summary['sleeps_per_req']['median']:.2f}" if "sleeps_per_req" in summary
                               else "")
                            + ("; " if note else "") + note)
                upstream = summary.get("upstream_conns_per_req", {}).get("median", 0)
                if rec["kind"] in ("wrk", "idle", "scaling") and key != "l4-connrate" and upstream > 0.01:
                    note += ("; " if note else "") + f"new upstream conns per request {upstream:.2f}"
                errs = sum(r.get("errors", 0) for r in entry["runs"])
                if errs:
                    note += ("; " if note else "") + f"**{errs:,} wrk errors**"
                if entry["errors"]:
                    note += ("; " if note else "") + "FAILED: " + "; ".join(e.splitlines()[0] for e in entry["errors"])
                cells += [busy, note]
            lines.append(f"| {key} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_notes(results: dict[str, Any]) -> list[str]:
    """What lbproxy's own /metrics said, where it is worth a look."""
    notes = []
    connects_zero_but_seen = []
    for key, rec in results.items():
        for label, m in rec.get("lbproxy_metrics", {}).items():
            if "error" in m:
                notes.append(f"{key} / {label}: /metrics unreadable: {m['error']}")
                continue
            odd = {k: v for k, v in m["requests"].items() if not k.startswith("bench 200")}
            if key == "l7-keepalive" or odd:
                notes.append(f"{key} / {label}: lbproxy_requests_total by route and status: "
                             + ", ".join(f"{k}: {v:,.0f}" for k, v in m["requests"].items()))
            if m["rejected"]:
                notes.append(f"{key} / {label}: {m['rejected']:,.0f} client connections rejected")
            if m["upstream_errors"]:
                notes.append(f"{key} / {label}: upstream errors "
                             + ", ".join(f"{k}: {v:,.0f}" for k, v in m["upstream_errors"].items()))
            entry = rec["systems"].get(label, {})
            seen = sum(r.get("upstream_conns", 0) for r in entry.get("runs", []) + [entry.get("warmup") or {}])
            if m["upstream_connects"] == 0 and seen > 0 and rec["kind"] == "wrk":
                connects_zero_but_seen.append(f"{key}/{label} {seen:,}")
    if connects_zero_but_seen:
        notes.append("lbproxy_upstream_connect_duration_seconds_count stayed 0 although the nginx backends "
                     "accepted connections from lbproxy (" + ", ".join(connects_zero_but_seen) + "): the "
                     "histogram doesn't seem to be observed anywhere.")
    return notes


def memory_notes(results: dict[str, Any]) -> list[str]:
    """RSS growth of a proxy over a scenario's measured runs (same process throughout)."""
    notes = []
    for key, rec in results.items():
        if rec.get("kind") not in ("wrk", "iperf"):
            continue
        for label, entry in rec.get("systems", {}).items():
            runs = [r for r in entry.get("runs", []) if "rss_kib_before" in r]
            if len(runs) < 2:
                continue
            growth = runs[-1]["rss_kib_after"] - runs[0]["rss_kib_before"]
            requests = sum(r.get("requests", 0) for r in runs)
            if growth > 256 and requests:
                notes.append(f"{key} / {label}: RSS grew {growth:,} KiB over {requests:,} requests of the "
                             f"measured runs ({growth * 1024 / requests:.1f} bytes per request), from "
                             f"{runs[0]['rss_kib_before']:,} KiB")
    return notes


def rate_detail(results: dict[str, Any], key: str = "l7-newconn-rate") -> str:
    """The fixed-rate scenario's ratio, for the new-connection target's detail."""
    r = ratio(results, key, "cpu_us")
    rec = results.get(key, {})
    if r is None or not rec.get("systems"):
        return ""
    rate = next((run["rate"] for e in rec["systems"].values() for run in e.get("runs", [])), 0)
    return f"at an equal, fixed {rate:,} conn/s ({key}, not the target's method) {r:.2f}x"


def rate_notes(results: dict[str, Any]) -> list[str]:
    """Rate runs that could not carry the rate asked: their CPU per connection is not at equal load."""
    out = []
    for key, rec in results.items():
        if rec.get("kind") != "rate":
            continue
        for label, entry in rec.get("systems", {}).items():
            short = [r for r in entry.get("runs", []) if r.get("sustained", 1.0) < SUSTAINED]
            if short:
                worst = min(r["sustained"] for r in short)
                out.append(f"{key} / {label}: {len(short)} of {len(entry['runs'])} runs carried less than "
                           f"{SUSTAINED:.0%} of the rate asked (down to {worst:.0%}): saturated, so not at equal load")
    return out


def steal_notes(results: dict[str, Any], max_steal: float) -> list[str]:
    """Runs measured again because of steal (``Runner._measure_steady``), and runs kept with more
    steal than ``max_steal`` once the retries ran out."""
    out = []
    for key, rec in results.items():
        for label, entry in rec.get("systems", {}).items():
            runs = entry.get("runs", [])
            dropped = [s for r in runs for s in r.get("steal_retried", [])]
            kept = [max(r.get("proxy_core_steal", 0), r.get("load_core_steal", 0)) for r in runs]
            robbed = [s for s in kept if s > max_steal]
            if dropped:
                low, high = f"{min(dropped):.0%}", f"{max(dropped):.0%}"
                taken = low if low == high else f"{low}–{high}"  # as printed: 12.1% and 12.4% are one "12%"
                out.append(f"{key} / {label}: {_runs(len(dropped))} dropped and measured again, the hypervisor having "
                           f"taken {taken} of the proxy or load core (steal)")
            if robbed:
                why = "not measured again (idle scenarios)" if rec.get("kind") == "idle" else "after the retries ran out"
                out.append(f"{key} / {label}: {len(robbed)} of {_runs(len(runs))} kept with steal above "
                           f"{max_steal:.0%} (up to {max(robbed):.0%}), {why}")
    return out


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def floor_notes(results: dict[str, Any]) -> list[str]:
    """How lbproxy's L7 CPU per request splits into the Python floor (the minimal proxy) and
    lbproxy's own work, per scenario where both ran."""
    out = []
    for key, rec in results.items():
        if "minimal" not in rec.get("systems", {}):
            continue
        lb, floor = med(results, key, "lbproxy", "cpu_us"), med(results, key, "minimal", "cpu_us")
        ha = med(results, key, "haproxy", "cpu_us")
        if lb is None or floor is None:
            continue
        text = (f"{key}: the minimal uvloop+httptools proxy needs {floor:.1f} µs per request"
                + (f" ({floor / ha:.2f}× haproxy)" if ha else "")
                + f"; lbproxy {lb:.1f} µs, so its own work (validation, routing, forwarding headers, "
                  f"re-framing, timers, counters) is {lb - floor:.1f} µs per request")
        lb_user, floor_user = med(results, key, "lbproxy", "cpu_user_us"), med(results, key, "minimal", "cpu_user_us")
        if lb_user is not None and floor_user is not None:
            text += f" ({lb_user - floor_user:.1f} µs of it user time)"
        out.append(text)
    return out


def noise_notes(results: dict[str, Any]) -> list[str]:
    """How steady the machine was: the speed probe and other processes' CPU, over every run."""
    runs = [r for rec in results.values() for e in rec.get("systems", {}).values() for r in e.get("runs", [])]
    probes = [r["probe_proxy_ms"] for r in runs if "probe_proxy_ms" in r]
    foreign = [r["foreign_cpu_s"] for r in runs if "foreign_cpu_s" in r]
    notes = []
    if probes:
        lo, mid, hi = min(probes), statistics.median(probes), max(probes)
        notes.append(f"Machine steadiness: a fixed CPU loop on the proxy core took {mid:.1f} ms (median) before "
                     f"each run, {lo:.1f}–{hi:.1f} ms over {len(probes)} runs ({(hi / lo - 1) * 100:.0f}% spread); "
                     "per-run CPU figures move with it, which is why systems alternate and ratios come from "
                     "medians of one run.")
    if foreign:
        busy = [f for f in foreign if f > 0.25]
        by_command: dict[str, float] = {}
        for r in runs:
            for comm, used in r.get("foreign_cpu_by_command", {}).items():
                by_command[comm] = by_command.get(comm, 0.0) + used
        top = sorted(by_command.items(), key=lambda kv: -kv[1])[:5]
        notes.append(f"Other processes on the machine used {sum(foreign):.1f} CPU-s during the measured runs "
                     f"(most in one run {max(foreign):.2f} s; {len(busy)} runs above 0.25 s)"
                     + (": " + ", ".join(f"{c} {u:.1f} s" for c, u in top) if top else "") + ".")
    return notes


def render_targets(tlist: list[Target]) -> str:
    lines = ["| target | lbproxy | limit | status |", "|---|---|---|---|"]
    for t in tlist:
        value = "—" if t.value is None else (f"{t.value:.2f}{t.unit}")
        limit = f"{'≤' if t.at_most else '≥'} {t.limit:g}{t.unit}"
        status = t.status + (f" ({t.by()})" if t.by() else "") + (f"; {t.detail}" if t.detail else "")
        lines.append(f"| {t.name} | {value} | {limit} | {status} |")
    return "\n".join(lines)


def render_profile(prof: dict[str, Any]) -> str:
    if "top_own" not in prof:
        return f"py-spy: {prof.get('skipped') or prof.get('error')}"
    lines = [f"py-spy record, {prof['samples']} samples{' (--native)' if prof.get('native') else ''}; "
             f"{prof['rps_unprofiled']:,.0f} req/s unprofiled, {prof['rps_profiled']:,.0f} while sampled; "
             f"stacks in {prof['file']}", "",
             "| # | function (file) | own % | total % |", "|---|---|---|---|"]
    for i, row in enumerate(prof["top_own"], 1):
        lines.append(f"| {i} | `{row['function']}` | {row['own_pct']:.1f} | {row['total_pct']:.1f} |")
    return "\n".join(lines)


def render_syscalls(data: dict[str, Any]) -> str:
    if "skipped" in data:
        return f"syscalls: {data['skipped']}"
    lines = ["System calls per request under keep-alive load (strace -c -f; counts, not time):", "",
             "| proxy | syscalls/request | top calls per request |", "|---|---|---|"]
    for label, row in data.items():
        if "error" in row:
            lines.append(f"| {label} | | error: {row['error'].splitlines()[0]} |")
            continue
        top = ", ".join(f"{name} {n:.2f}" for name, n in list(row["per_request"].items())[:6])
        lines.append(f"| {label} | {row['total_per_request']:.2f} | {top} |")
    return "\n".join(lines)


def write_chart(results: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install matplotlib)"
    panels = []
    for key, rec in results.items():
        if rec.get("skipped"):
            continue
        cost, thru = {"wrk": ("cpu_us", "rps"), "rate": ("cpu_us", "rps"), "iperf": ("cpu_s_per_gb", "gbps"), "idle": ("kb_per_conn", "rps"),
                      "scaling": ("cpu_us", "rps")}[rec["kind"]]
        labels = {"cpu_us": "proxy CPU µs/request", "rps": "requests/s", "cpu_s_per_gb": "proxy CPU-s/GB",
                  "gbps": "GB/s", "kb_per_conn": "KB per idle connection"}
        for metric in (cost, thru):
            bars = [(label, e["summary"][metric]) for label, e in rec["systems"].items()
                    if metric in e.get("summary", {})]
            if bars:
                panels.append((f"{key}: {labels[metric]}", bars))
    if not panels:
        return "chart skipped: no results"
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.8 * rows), squeeze=False)
    palette = {"lbproxy": "#1f77b4", "lbproxy+log": "#6baed6", "haproxy": "#d62728", "haproxy-splice": "#ff9896",
               "nginx": "#2ca02c"}
    for ax, (title, bars) in zip(axes.flat, panels, strict=False):  # more axes than panels
        names = [b[0] for b in bars]
        values = [b[1]["median"] for b in bars]
        low = [b[1]["median"] - b[1]["min"] for b in bars]
        high = [b[1]["max"] - b[1]["median"] for b in bars]
        ax.barh(names, values, xerr=[low, high], color=[palette.get(n, "#9467bd") for n in names], capsize=3)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,.0f}" if v >= 100 else f" {v:.3g}", va="center", fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("lbproxy vs haproxy vs nginx (median, min–max bars)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"


# --------------------------------------------------------------------------------------------
# main


def versions(env: Env) -> dict[str, str]:
    def out(argv: list[str], cwd: Path = ROOT, environ: dict[str, str] | None = None) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=cwd, env=environ)
            return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else ""
        except (OSError, subprocess.TimeoutExpired):
            return ""

    import importlib.metadata as md

    info = {"python": platform.python_version(), "kernel": platform.release(),
            "lbproxy": out([sys.executable, "-m", "lbproxy", "--version"], env.lbproxy_src, env.lbproxy_env()),
            "lbproxy_src": str(env.args.lbproxy_src), "lbproxy_digest": env.lbproxy_digest,
            "commit": out(["git", "rev-parse", "--short", "HEAD"], env.args.lbproxy_src),
            "dirty": "yes" if out(["git", "status", "--porcelain", "--untracked-files=no", "--", "lbproxy"],
                                  env.args.lbproxy_src) else "no",
            "haproxy": out(["haproxy", "-v"]) if shutil.which("haproxy") else "",
            "nginx": out(["nginx", "-v"]) if shutil.which("nginx") else "",
            "wrk": out(["wrk", "-v"]), "iperf3": out(["iperf3", "-v"]) if shutil.which("iperf3") else "",
            "cpus": str(os.cpu_count()), "cpu_model": ""}
    if wants_alt(env.args):
        # which build each runs: "(python build)" or "(mypyc build)" (lbproxy.build)
        info["lbproxy_alt"] = out([str(env.args.alt_python or sys.executable), "-m", "lbproxy", "--version"],
                                  env.alt_src, env.lbproxy_env(env.alt_src))
    if env.args.alt_python is not None:
        info["alt_python"] = out([str(env.args.alt_python), "-c", "import sys; print(sys.version)"])
    for pkg in ("uvloop", "httptools"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s per run, 1 round, 1 s warm-up")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per system (default 2)")
    p.add_argument("--max-steal", type=float, default=0.10,
                   help="measure a wrk/iperf3/h2load run again when the hypervisor took more than this share "
                        "of the proxy or load core (default 0.10; 1 keeps every run)")
    p.add_argument("--steal-retries", type=int, default=2, help="at most this many runs again per round (default 2)")
    p.add_argument("--scenarios", default="all",
                   help="comma-separated scenario keys, or 'all' (default), or 'none' with --profile")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--idle-connections", type=int, default=10000, help="idle connections for idle-l7")
    p.add_argument("--newconn-rate", type=int, default=6000,
                   help="connections per second of l7-newconn-rate (default 6000: below every proxy's "
                        "capacity on a 2-core machine; whole thousands keep the arrivals smooth)")
    p.add_argument("--profile", action="store_true",
                   help="after the scenarios, py-spy record lbproxy during L7 keep-alive")
    p.add_argument("--profile-seconds", type=float, default=5.0)
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--profile-close", action="store_true", help="--profile with a new connection per request")
    p.add_argument("--perf", action="store_true",
                   help="after the scenarios, perf record each L7 proxy (kernel and user time by symbol)")
    p.add_argument("--perf-seconds", type=float, default=5.0)
    p.add_argument("--perf-close", action="store_true", help="--perf with a new connection per request")
    p.add_argument("--syscalls", action="store_true",
                   help="after the scenarios, count system calls per request of each proxy (strace -c)")
    p.add_argument("--load-cpu", default="0", help="CPU(s) for wrk, iperf3, clients (default 0)")
    p.add_argument("--proxy-cpu", default="1", help="CPU(s) for the proxy under test (default 1)")
    p.add_argument("--backend-cpu", default=None, help="CPU(s) for backends (default: the load CPU)")
    p.add_argument("--scaling-cpus", default=None,
                   help="CPUs for lbproxy in the scaling scenario (default: all but the load CPU, "
                        "or all CPUs on a 2-core machine)")
    p.add_argument("--scaling-quota", type=float, default=None,
                   help="hold each lbproxy worker of the scaling scenario to this share of a CPU (cgroup "
                        f"quota; default {SCALING_QUOTA:g} when fewer than 2 CPUs are free of the load, else "
                        "off; 0: off)")
    p.add_argument("--systems", default="",
                   help="comma-separated system labels to run (lbproxy,lbproxy-alt,haproxy,...); default all")
    p.add_argument("--alt-src", type=Path, default=None,
                   help="a second checkout whose lbproxy runs as 'lbproxy-alt' in the L7 scenarios (A/B in one run)")
    p.add_argument("--alt-python", type=Path, default=None,
                   help="the Python that runs 'lbproxy-alt' (default: this one; with uvloop, httptools, pyyaml "
                        "and prometheus-client installed); without --alt-src, lbproxy-alt is this checkout")
    p.add_argument("--lbproxy-src", type=Path, default=ROOT,
                   help="directory holding the lbproxy package to measure (default: this checkout); "
                        "copied when the run starts")
    p.add_argument("--port-base", type=int, default=21000, help="first port to try (default 21000)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default results/bench-DATE)")
    p.add_argument("--no-chart", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 2.0, 1, 1.0
    args.backend_cpu = args.backend_cpu or args.load_cpu
    if args.scaling_cpus is None:
        ncpu = os.cpu_count() or 1
        rest = [c for c in range(ncpu) if c not in parse_cpus(args.load_cpu)]
        if len(rest) >= 2:
            args.scaling_cpus = ",".join(map(str, rest))
        elif args.scaling_quota is None and quotas_available():
            # No core per worker to spare: each worker gets a share of the proxy core instead
            # (cpu_quota's docstring), and the load keeps its own.
            args.scaling_quota = SCALING_QUOTA
            args.scaling_cpus = args.proxy_cpu
        else:
            args.scaling_cpus = f"0-{ncpu - 1}"
    if args.scaling_quota and not quotas_available():
        p.error("--scaling-quota needs a writable cgroup cpu controller (root)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    idle_l4 = min(args.idle_connections, (hard - 2000) // 2)  # a tcp proxy holds 2 fds per connection
    scenarios = all_scenarios(args.idle_connections, idle_l4, alt=wants_alt(args), newconn_rate=args.newconn_rate)
    if args.list:
        for sc in scenarios:
            print(f"{sc.key:<16} {sc.title}")
        return 0
    if args.scenarios == "all":
        chosen = scenarios
    elif args.scenarios == "none":
        chosen = []
    else:
        wanted = args.scenarios.split(",")
        unknown = set(wanted) - {sc.key for sc in scenarios}
        if unknown:
            print(f"unknown scenario(s): {', '.join(sorted(unknown))}; --list shows them", file=sys.stderr)
            return 2
        chosen = [sc for sc in scenarios if sc.key in wanted]
    if args.systems:
        keep = set(args.systems.split(","))
        for sc in chosen:
            sc.systems = [system for system in sc.systems if system.label in keep]
    missing = [tool for tool in ("wrk", "taskset") if not shutil.which(tool)]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install -y wrk util-linux)", file=sys.stderr)
        return 2
    ncpu = os.cpu_count() or 1
    for cpus in (args.load_cpu, args.proxy_cpu):
        if any(c >= ncpu for c in parse_cpus(cpus)):
            print(f"CPU list {cpus} beyond the {ncpu} CPUs of this machine", file=sys.stderr)
            return 2

    stamp = datetime.datetime.now()
    out_dir = args.out or RESULTS / f"bench-{stamp:%Y%m%d-%H%M%S}"
    out_dir.mkdir(parents=True, exist_ok=True)
    os.sched_setaffinity(0, set(parse_cpus(args.load_cpu)))  # the harness runs on the load core too

    def on_term(signum: int, frame: object) -> None:
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    env = Env(args, out_dir)
    runner = Runner(env, args)
    profile: dict[str, Any] | None = None
    syscalls: dict[str, Any] | None = None
    perf: dict[str, Any] | None = None
    interrupted = ""
    meta: dict[str, Any] = {"date": stamp.isoformat(timespec="seconds"), "duration_s": args.duration,
                            "rounds": args.rounds, "warmup_s": args.warmup, "load_cpu": args.load_cpu,
                            "proxy_cpu": args.proxy_cpu, "backend_cpu": args.backend_cpu,
                            "backends": env.backend_kind, "fd_limit": hard, "haproxy_maxconn": env.haproxy_maxconn,
                            "haproxy_l4_maxconn": env.haproxy_l4_maxconn,
                            "argv": sys.argv[1:]}
    meta["versions"] = {}
    try:
        print(f"lbproxy benchmark suite -> {out_dir}")
        print(f"load core {args.load_cpu} (wrk, iperf3, backends, harness), proxy core {args.proxy_cpu}; "
              f"{args.duration:g} s x {args.rounds} rounds")
        env.setup()
        meta["versions"] = versions(env)
        for sc in chosen:
            try:
                runner.run_scenario(sc)
            except BenchError as exc:
                runner.results.setdefault(sc.key, {"title": sc.title, "kind": sc.kind, "systems": {}})
                runner.results[sc.key]["skipped"] = f"FAILED: {exc}"
                print(f"   !! {sc.key}: {exc}")
        if args.syscalls:
            syscalls = runner.syscalls(3.0)
        if args.perf:
            perf = runner.perf(args.perf_seconds, close=args.perf_close)
        if args.profile:
            profile = runner.profile(args.profile_seconds, args.profile_native, args.profile_close)
    except (KeyboardInterrupt, Stop):
        interrupted = "interrupted: partial results"
        print(f"\n{interrupted}")
    except BenchError as exc:
        interrupted = f"aborted: {exc}"
        print(f"\n{interrupted}", file=sys.stderr)
    finally:
        env.teardown()

    results = runner.results
    for rec in results.values():  # scenarios interrupted before their summaries
        for entry in rec.get("systems", {}).values():
            entry.setdefault("summary", summarize(entry.get("runs", [])))
    tlist = targets(results, env)
    notes = list(env.notes)
    if interrupted:
        notes.append(interrupted)
    if not env.workers_flag and any(sc.key == "scaling" for sc in chosen):
        results.setdefault("scaling", {"title": "lbproxy 1 vs 2 workers", "kind": "scaling", "systems": {}})
        results["scaling"]["skipped"] = "not available yet: `python -m lbproxy run --help` lists no --workers"
    notes += floor_notes(results) + rate_notes(results) + metric_notes(results) + memory_notes(results)
    notes += steal_notes(results, args.max_steal) + noise_notes(results)
    text = "\n\n".join([
        f"Run {meta['date']} ({args.duration:g} s × {args.rounds} rounds; "
        f"{meta['versions'].get('lbproxy', '')} at {meta['versions'].get('commit', '')}"
        f"{' + uncommitted changes' if meta['versions'].get('dirty') == 'yes' else ''}"
        f" (code digest {meta['versions'].get('lbproxy_digest', '')}); "
        + (f"lbproxy-alt: {meta['versions']['lbproxy_alt']}; " if meta["versions"].get("lbproxy_alt") else "")
        + f"{meta['versions'].get('haproxy', '').split(' - ')[0]}; {meta['versions'].get('nginx', '')}; "
        f"{meta['versions'].get('cpus')} × {meta['versions'].get('cpu_model')}). Cells: median (min–max).",
        render_table(results),
        "Targets (ratios of medians, lbproxy with access log off, one process):",
        render_targets(tlist),
    ]
        + ([render_syscalls(syscalls)] if syscalls else [])
        + ([render_perf(perf)] if perf else [])
        + ([render_profile(profile)] if profile else [])
        + (["Notes:\n" + "\n".join(f"- {n}" for n in notes)] if notes else []))
    doc = {"meta": meta, "scenarios": results, "targets": [t.__dict__ | {"status": t.status} for t in tlist],
           "profile": profile, "syscalls": syscalls, "perf": perf, "notes": notes}
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    (out_dir / "table.md").write_text(text + "\n")
    print("\n" + text + "\n")
    if not args.no_chart:
        print(write_chart(results, out_dir / "chart.png"))
    print(f"results: {out_dir / 'results.json'}, {out_dir / 'table.md'}")
    return 1 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/run.py's fixed-rate scenario (l7-newconn-rate): h2load's arguments and figures.

The scenario compares the proxies' CPU per connection at one open-loop arrival rate, so the
figures it reads from h2load (connections carried, failures, duration) decide whether a run was
at equal load at all. The parser is checked on h2load's real summary, and ``run_h2load_rate``
against a real server on loopback, counting the connections that server saw.
"""

from __future__ import annotations

import shutil
import socket
import threading
from types import SimpleNamespace

import pytest

from tests.bench_modules import bench_run

# What h2load 1.52 printed for 48,000 connections at 8 per ms through lbproxy.
H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 48000 total client(s). Up to 8 client(s) will be created every 1ms 48000 total requests
Application protocol: http/1.1
progress: 10% of clients started

finished in 6.03s, 7959.93 req/s, 0B/s
requests: 48000 total, 48000 started, 47990 done, 47900 succeeded, 90 failed, 3 errored, 2 timeout
status codes: 47850 2xx, 0 3xx, 40 4xx, 10 5xx
traffic: 0B (0) total, 6.08MB (6379635) headers (space savings 0.00%), 562.50KB (576000) data
                     min         max         mean         sd        +/- sd
time for request:      247us      5.20ms       678us       376us    92.52%
time for connect:       26us      3.23ms       176us        96us    68.81%
time to 1st byte:      290us      5.30ms       855us       396us    86.86%
req/s           :     187.98     3305.25     1311.36      441.01    70.81%
"""


def test_parse_h2load_reads_the_summary() -> None:
    data = bench_run.parse_h2load(H2LOAD_OUTPUT)
    assert data["requests"] == 47900
    assert data["planned"] == 48000
    assert data["unfinished"] == 10
    assert (data["failed"], data["errored"], data["timeouts"]) == (90, 3, 2)
    assert data["status_errors"] == 50  # succeeded but not 2xx
    assert data["duration_us"] == pytest.approx(6.03e6)
    assert data["min_ms"] == pytest.approx(0.247)
    assert data["max_ms"] == pytest.approx(5.2)
    assert data["mean_ms"] == pytest.approx(0.678)


def test_parse_h2load_refuses_output_without_a_summary() -> None:
    with pytest.raises(bench_run.BenchError, match="no summary"):
        bench_run.parse_h2load("connect: Connection refused\n")


@pytest.mark.parametrize(
    ("rate", "expected"), [(6000, (6, 1)), (1000, (1, 1)), (2500, (5, 2)), (750, (3, 4)), (10, (1, 100))]
)
def test_rate_arguments_give_the_rate_in_the_smallest_bursts(rate: int, expected: tuple[int, int]) -> None:
    per, period_ms = bench_run.h2load_rate_args(rate)
    assert (per, period_ms) == expected
    assert per * 1000 / period_ms == rate


def test_rate_metrics_flag_a_rate_not_carried() -> None:
    raw = {"requests": 2400, "duration_us": 1.0e6, "rate": 3000, "proxy_cpu_s": 0.12, "proxy_user_s": 0.05,
           "proxy_sys_s": 0.07, "proxy_sleeps": 1200}
    out = bench_run.rate_metrics(raw)
    assert out["conn_per_s"] == pytest.approx(2400)
    assert out["sustained"] == pytest.approx(0.8)
    assert out["cpu_us"] == pytest.approx(50.0)
    results = {"l7-newconn-rate": {"kind": "rate", "systems": {"lbproxy": {"runs": [out]}}}}
    notes = bench_run.rate_notes(results)
    assert len(notes) == 1 and "saturated" in notes[0] and "80%" in notes[0]


class _CountingServer:
    """Answers each connection's request with a short response, closes, and counts them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.heads: list[bytes] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.connections += 1
                if len(self.heads) < 3:
                    self.heads.append(head)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


def test_run_h2load_rate_opens_the_connections_asked_for() -> None:
    assert shutil.which("h2load"), "h2load is needed (apt-get install -y nghttp2-client; .ci/run installs it)"
    server = _CountingServer()
    try:
        env = SimpleNamespace(load_cpus="0")
        data = bench_run.run_h2load_rate(env, server.port, 1.0, 200)
    finally:
        server.stop()
    assert data["requests"] == 200
    assert data["errors"] == 0
    assert server.connections == 200  # one connection per request
    assert data["duration_us"] > 0.8e6  # spread over the second, not all at once
    head = server.heads[0].lower()
    assert head.count(b"\r\nhost:") == 1 and b"host: bench.example.com\r\n" in head
    assert b"connection: close\r\n" in head

"""lbproxy's own Python work per L7 keep-alive request, without sockets or system calls.

``run.py`` measures the whole proxy (Python, uvloop, kernel) next to haproxy and nginx. This
isolates the part lbproxy's code decides: one client connection's HttpSession and a pooled
UpstreamConnection are driven with in-memory transports, the benchmark's request in and a
backend's response back, exactly the callbacks uvloop makes (data_received on each side), with
the listener, router, pool, strategy and counters of ``configs/lbproxy.yaml`` (five routes, the
request matching the last). What is left out: the event loop, the syscalls, the kernel.

    python benchmarks/hotpath.py                 # µs per request (best of 9 x 50,000)
    python benchmarks/hotpath.py --profile       # cProfile of the same loop, by own time
    python benchmarks/hotpath.py --log           # with the access log on (written to /dev/null)
    python benchmarks/hotpath.py --new-connections  # a client connection per request
    python benchmarks/hotpath.py --browser       # a browser's request (16 fields) instead of wrk's
    python benchmarks/hotpath.py --instructions  # CPU instructions per request, under valgrind
    python benchmarks/hotpath.py --bytecodes     # Python bytecodes per request, by function

Timings move with the machine (on a shared VM by 10% from one minute to the next);
``--instructions`` counts what the CPU executes instead (valgrind's callgrind, ~1 minute): the
same count run after run, so a change of a few hundred instructions per request is visible.
It runs the loop twice, for 2,000 and 12,000 requests, and reports the difference over 10,000,
which leaves out start-up and imports.

``--bytecodes`` traces every bytecode lbproxy's functions execute for 1,000 requests
(``sys.settrace`` with opcode events, a few seconds) and lists them by function: exact and
repeatable like ``--instructions``, and it says where they go, which cProfile's per-call
overhead blurs for functions this small. Most of the instructions are the interpreter's
(``_PyEval_EvalFrameDefault``: 57% of them under callgrind), so fewer bytecodes is the usual
way to fewer instructions; a C call that is slow inside (an exception raised and cleared, say)
shows in the instruction count but not here.

Use it to find and check hot-path changes quickly; confirm with ``run.py`` (the figure that
counts is the proxy's CPU per request next to haproxy's, and syscalls are half of it).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from string import Template
from types import FrameType
from typing import Any

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import browser_request  # noqa: E402  (benchmarks/browser_request.py, next to this script)

from lbproxy.accesslog import AccessLog  # noqa: E402
from lbproxy.config.loader import load_config_text  # noqa: E402
from lbproxy.l7.listener import HttpListener, UpstreamRegistry  # noqa: E402
from lbproxy.l7.session import HttpSession  # noqa: E402
from lbproxy.l7.upstream import UpstreamConnection  # noqa: E402
from lbproxy.pool.pool import Pool  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: bench.example.com\r\n\r\n"  # what wrk -H 'Host: ...' sends
BROWSER_REQUEST = browser_request.request_head()  # what --browser sends instead: 16 fields, a cookie
BROWSER_CLOSE_REQUEST = browser_request.request_head(connection="close")
RESPONSE = (  # what the benchmark's nginx backends answer
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 08:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\r\nhello world\n"
)


class MemoryTransport(asyncio.Transport):
    """Records what is written; the harness plays the peer."""

    def __init__(self, peer: tuple[str, int], local: tuple[str, int]) -> None:
        super().__init__()
        self.extra = {"peername": peer, "sockname": local}
        self.written = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


def build_listener(access_log: bool) -> tuple[HttpListener, list[UpstreamConnection]]:
    template = Template((HERE / "configs" / "lbproxy.yaml").read_text())
    text = template.substitute(
        admin_port=1, http_port=2, tcp_port=3, iperf_port=4, iperf_splice_port=5, backend1=11, backend2=12, backend3=13,
        iperf_backend=14, access_log="access_log: {format: combined, path: /dev/null}" if access_log else "",
    )
    config = load_config_text(text, "benchmarks/configs/lbproxy.yaml")
    pools = {name: Pool(pool_config) for name, pool_config in config.pools.items()}
    listener_config = next(c for c in config.listeners if c.mode == "http")
    log = AccessLog(config.access_log) if config.access_log else None
    listener = HttpListener(listener_config, pools, UpstreamRegistry(), access_log=log)
    conns: list[UpstreamConnection] = []
    for backend in pools["web"].backends:  # one warm idle connection per backend, as under load
        owner = listener.upstreams.for_backend(backend, pools["web"].config)
        conn = UpstreamConnection(owner)
        conn.connection_made(MemoryTransport((backend.host, backend.port), ("127.0.0.1", 40000)))
        owner.put(conn)
        conns.append(conn)
    return listener, conns


def pass_ends(listener: HttpListener) -> Callable[[], None]:
    """What ends an event-loop pass here: the outbox sends what the pass wrote (one pass per
    event, as an idle proxy has). The callback a pass schedules (one call_soon, ~0.5 µs with
    uvloop, shared by all the events of a pass under load) is left out: it would pile up
    unrun in this loop-less harness."""
    outbox = listener.outbox
    outbox.scheduled = True  # as if the pass's flush were scheduled already
    return outbox.flush


def run(listener: HttpListener, conns: list[UpstreamConnection], requests: int) -> float:
    """Seconds for ``requests`` request/response cycles on one keep-alive client connection."""
    session = HttpSession(listener)
    client = MemoryTransport(("127.0.0.1", 50000), ("127.0.0.1", 2))
    session.connection_made(client)
    by_transport = {id(c.transport): c for c in conns}
    request, response = REQUEST, RESPONSE
    end_pass = pass_ends(listener)
    t0 = time.perf_counter()
    for _ in range(requests):
        session.data_received(request)
        end_pass()
        exchange = session.current
        assert exchange is not None and exchange.upstream is not None
        upstream = exchange.upstream
        upstream.data_received(response)
        end_pass()
    elapsed = time.perf_counter() - t0
    assert session.current is None and session.requests == requests, "a request did not complete"
    assert client.written > requests * 100 and by_transport
    session.connection_lost(None)
    return elapsed


CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench.example.com\r\nConnection: close\r\n\r\n"


def run_new_connections(listener: HttpListener, conns: list[UpstreamConnection], requests: int) -> float:
    """Seconds for ``requests`` client connections of one ``Connection: close`` request each
    (run.py's l7-newconn): session set-up and tear-down included, the upstream kept alive."""
    request, response = CLOSE_REQUEST, RESPONSE
    end_pass = pass_ends(listener)
    t0 = time.perf_counter()
    for i in range(requests):
        session = HttpSession(listener)
        client = MemoryTransport(("127.0.0.1", 1024 + i % 60000), ("127.0.0.1", 2))
        session.connection_made(client)
        session.data_received(request)
        end_pass()
        exchange = session.current
        assert exchange is not None and exchange.upstream is not None
        exchange.upstream.data_received(response)
        end_pass()
        assert client.closing, "the session did not close after Connection: close"
        session.connection_lost(None)
    elapsed = time.perf_counter() - t0
    assert not listener.connections
    return elapsed


async def main(args: argparse.Namespace) -> None:
    listener, conns = build_listener(args.log)
    if args.new_connections:
        global run  # same reporting, the per-connection loop
        run = run_new_connections
    run(listener, conns, 2000)  # warm-up
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(listener, conns, args.requests)
        profiler.disable()
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(60)
        return
    best = min(run(listener, conns, args.requests) for _ in range(args.repeat))
    what = "new connection (one request each)" if args.new_connections else "keep-alive request"
    print(f"{best / args.requests * 1e6:.2f} µs of lbproxy Python per {what} "
          f"(best of {args.repeat} x {args.requests:,}; no syscalls, no event loop)")


def count_bytecodes(args: argparse.Namespace) -> None:
    """Bytecodes per request executed in each lbproxy function, over 1,000 requests."""
    requests = 1_000
    by_function: Counter[tuple[str, str]] = Counter()
    package = str(HERE.parent / "lbproxy")

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if not code.co_filename.startswith(package):
            return None  # the harness and the standard library: not traced
        frame.f_trace_opcodes = True
        if event == "opcode":
            by_function[(code.co_filename[len(package) - len("lbproxy"):], code.co_qualname)] += 1
        return trace

    async def traced() -> None:
        listener, conns = build_listener(args.log)
        loop = run_new_connections if args.new_connections else run
        loop(listener, conns, 500)  # warm-up: first-use paths (caches, memos) left out
        sys.settrace(trace)
        try:
            loop(listener, conns, requests)
        finally:
            sys.settrace(None)

    uvloop.run(traced())
    total = sum(by_function.values())
    what = "new connection (one request each)" if args.new_connections else "keep-alive request"
    print(f"{total / requests:,.0f} bytecodes of lbproxy Python per {what}")
    for (filename, function), count in by_function.most_common(40):
        print(f"{count / requests:8.1f}  {filename}:{function}")


def count_instructions(args: argparse.Namespace) -> None:
    """Instructions per request: two runs under callgrind, the difference over the extra requests."""
    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    extra = [
        flag
        for flag, on in (("--log", args.log), ("--new-connections", args.new_connections), ("--browser", args.browser))
        if on
    ]
    counts = []
    for requests in (2_000, 12_000):
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
             "--requests", str(requests), "--repeat", "1", *extra],
            capture_output=True, text=True, check=True,
        )
        found = re.search(r"Collected : (\d+)", done.stderr)
        if found is None:
            sys.exit(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    what = "new connection (one request each)" if args.new_connections else "keep-alive request"
    print(f"{(counts[1] - counts[0]) / 10_000:,.0f} instructions of lbproxy Python per {what} (callgrind)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--log", action="store_true", help="access log on (to /dev/null)")
    parser.add_argument("--new-connections", action="store_true",
                        help="a new client connection per request (Connection: close), as l7-newconn")
    parser.add_argument("--browser", action="store_true",
                        help="a browser's request (16 fields, a cookie) instead of wrk's (Host only)")
    parser.add_argument("--instructions", action="store_true", help="count instructions under valgrind")
    parser.add_argument("--bytecodes", action="store_true", help="count bytecodes per request by function")
    arguments = parser.parse_args()
    if arguments.browser:  # read by run() and run_new_connections() at each call
        REQUEST, CLOSE_REQUEST = BROWSER_REQUEST, BROWSER_CLOSE_REQUEST
    if arguments.instructions:
        count_instructions(arguments)
    elif arguments.bytecodes:
        count_bytecodes(arguments)
    else:
        uvloop.run(main(arguments))  # the daemon's loop: timers cost what they cost there

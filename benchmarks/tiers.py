"""Three load-balancing tiers side by side, with one backend overloaded and one failing (issue 12).

Usage::

    python benchmarks/tiers.py            # the simulation (seeded, pure Python, a few seconds)
    python benchmarks/tiers.py --live     # the simulation, then a live run on loopback (~45 s)

Writes ``benchmarks/results/tiers.png`` (simulation; also copied to ``docs/tiers.png`` unless
``--no-docs``) and ``benchmarks/results/tiers-live.png`` (live run), the numbers next to them
(``tiers.json``, ``tiers-live.json``), and prints a summary table. The simulation is run
twice: at the story's scale (``STORY``: 180 s, TTL 30 s) and at the live run's compressed scale
(``LIVE``: 36 s, TTL 6 s), so the live numbers can be checked against the model.

The live run starts 16 backends in this process (b1..b4 on 127.0.0.11..14, one port per tier so
the tiers don't share queues), lbproxy as a subprocess (``python -m lbproxy run -c``, in a
temporary directory, stopped with SIGTERM at the end) with a ``dns``, a ``tcp`` and an ``http``
listener and one pool per tier, and every tier's clients at once. When lbproxy takes b4 out of
rotation is read from its ``/status`` every 0.1 s.

The story
---------
Four backends b1..b4 serve the same HTTP service. b2 is **overloaded**: each request takes 10×
the normal service time and it has few workers, so under an even share its queue fills and it
answers ``503`` when the queue is full. b4 **fails** at ``fail_at``: it crashes (open connections
are reset, requests in flight are lost) and from then on refuses connections. The same clients,
with the same request arrivals (same seed), reach the backends four ways:

1.  **DNS round robin** (blind): each client resolves the name, caches the answer for the TTL,
    and connects to that address. The DNS server rotates over all four addresses whatever their
    health (live: an lbproxy ``dns`` listener on a pool *without* health checks). A client whose
    cached address is b4 fails every request until its TTL runs out, and re-resolving may hand
    it b4 again.
1b. **lbproxy's health-aware DNS**: the same, but the answers leave out b4 once the pool's
    active health check has marked it down; clients still hold stale answers until their TTL.
2.  **L4**: an lbproxy ``tcp`` listener with ``least_connections``: a backend is chosen per TCP
    connection, by fewest live connections. A refused connect is retried on another backend.
3.  **L7**: an lbproxy ``http`` listener with ``least_connections``, which at L7 counts requests
    in flight: a backend is chosen per request, a refused connect is retried on another backend,
    and an idempotent request whose reused upstream connection dies is retried.

Model and assumptions (the simulation; the live run does the same for real)
---------------------------------------------------------------------------
- **Clients** are open loop: each sends requests as a Poisson process of ``rate`` per second,
  whatever the latency. Each keeps a pool of HTTP/1.1 keep-alive connections: a request takes the
  most recently used idle connection (LIFO, as urllib3 and aiohttp do), or opens a new one when
  all are busy. A connection is closed after ``reuse`` requests or ``idle_timeout`` idle; a
  connection the server has closed is noticed and skipped before it is reused. Clients never
  retry: every error is a failed request.
- **DNS clients** use the first address of the answer only (the listener has
  ``max_answers: 1``, so there is no other address to fall back on) and honour the TTL. At t=0
  every client holds an answer with a uniformly random remaining lifetime (clients do not
  resolve in lockstep). Idle connections to a previous answer stay in the pool (pools are keyed
  by host name), new connections go to the current answer.
- **Backends** are FIFO queues: ``workers`` requests served at once, exponential service times
  (mean ``service``, b2 ``slow_factor`` × that with ``slow_workers``), at most ``queue`` waiting;
  a request that finds the queue full gets ``503`` at once. A crash loses the queue.
- **lbproxy** (tiers 1b, 2, 3) as configured: active tcp checks every ``check_interval``, a
  backend goes down after ``check_fall`` failed checks (checked at half the interval while a
  change is under way, as lbproxy does), or earlier by passive ejection after ``eject_after``
  connect failures or resets in a row (lbproxy's default ``outlier_detection``); ``retries``
  further backends after a refused connect. The simulation uses lbproxy's own ``RoundRobin`` and
  ``LeastConnections`` classes. In L7, requests in flight on b4 when it crashes are assumed to be
  on reused upstream connections (lbproxy pools them), so they are retried; on a fresh connection
  lbproxy would answer 502 instead.
- Not modelled: network latency, connect time, lbproxy's own CPU, DNS query time.

Counted per tier, by the second the request was sent: requests answered by each backend, failed
requests and their cause. "Overloaded share" is the fraction of all requests that reached b2
(answered 200 or 503).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import os
import random
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lbproxy.balancing.least_connections import LeastConnections
from lbproxy.balancing.round_robin import RoundRobin

RESULTS = ROOT / "benchmarks" / "results"
DOCS_PNG = ROOT / "docs" / "tiers.png"

BACKENDS = ("b1", "b2", "b3", "b4")
SLOW = "b2"  # the overloaded backend
DEAD = "b4"  # the backend that fails at ``fail_at``
IPS = {name: f"127.0.0.{11 + i}" for i, name in enumerate(BACKENDS)}  # live: one loopback IP each

OVERLOADED_503 = "503 from the overloaded backend"
FAILURE_KINDS = {  # how failures are split in the plot
    "error": "failed: refused / reset / 502",
    "overload": "failed: 503 from b2 (queue full)",
}


@dataclass(frozen=True)
class Tier:
    key: str
    title: str
    health_checked: bool  # does lbproxy take b4 out of rotation in this tier?


TIERS = (
    Tier("dns", "1 · DNS round robin, TTL-cached, blind to health", False),
    Tier("dns-health", "1b · lbproxy dns listener: health-aware answers, still TTL-cached", True),
    Tier("l4", "2 · L4 tcp listener, least connections (per connection)", True),
    Tier("l7", "3 · L7 http listener, least outstanding requests (per request)", True),
)


@dataclass(frozen=True)
class Scenario:
    """Everything that shapes a run; times in seconds."""

    clients: int  # per tier
    rate: float  # requests per second per client (Poisson)
    duration: float
    fail_at: float  # b4 crashes
    ttl: int  # DNS TTL
    service: float  # mean service time of a normal backend (exponential)
    slow_factor: float  # b2's service time is this many times longer ...
    workers: int  # requests a normal backend serves at once
    slow_workers: int  # ... and it serves only this many at once
    queue: int  # requests a backend holds waiting; beyond it answers 503
    check_interval: float  # lbproxy active health check
    check_fall: int  # failed checks in a row that take a backend down
    eject_after: int  # lbproxy passive ejection: connect failures/resets in a row
    retries: int  # lbproxy: further backends tried after a refused connect
    reuse: int  # requests per client keep-alive connection
    idle_timeout: float  # a client closes a keep-alive connection idle this long
    bin: float  # width of one bar of the plot
    seed: int = 12


# The story at realistic time scales: a 30 s TTL, lbproxy's default health-check interval.
STORY = Scenario(
    clients=100, rate=2.0, duration=180.0, fail_at=60.0, ttl=30, service=0.01, slow_factor=10.0,
    workers=16, slow_workers=2, queue=20, check_interval=2.0, check_fall=3, eject_after=5,
    retries=2, reuse=20, idle_timeout=5.0, bin=2.0,
)  # fmt: skip

# The live run, compressed in time to stay under a minute and light enough for one Python process.
LIVE = Scenario(
    clients=40, rate=2.0, duration=36.0, fail_at=12.0, ttl=6, service=0.01, slow_factor=10.0,
    workers=16, slow_workers=1, queue=10, check_interval=1.0, check_fall=3, eject_after=5,
    retries=2, reuse=20, idle_timeout=2.0, bin=1.0,
)  # fmt: skip


# == results ========================================================================================


@dataclass
class TierResult:
    """What one tier did: per-bin counts by the time each request was sent."""

    tier: str
    bin: float
    ok: dict[str, list[int]]  # backend -> requests answered 200, per bin
    failed: dict[str, list[int]]  # FAILURE_KINDS key -> failed requests, per bin
    causes: Counter[str] = field(default_factory=Counter)
    reached: Counter[str] = field(default_factory=Counter)  # requests that got an answer from a backend
    out_of_rotation_at: float | None = None  # when lbproxy stopped handing out b4

    @classmethod
    def empty(cls, tier: str, scenario: Scenario) -> TierResult:
        bins = int(scenario.duration / scenario.bin + 0.5)
        return cls(tier, scenario.bin, {b: [0] * bins for b in BACKENDS}, {k: [0] * bins for k in FAILURE_KINDS})

    @property
    def bins(self) -> int:
        return len(self.ok[BACKENDS[0]])

    def _index(self, sent: float) -> int | None:
        i = int(sent / self.bin)
        return i if 0 <= i < self.bins else None

    def record_ok(self, sent: float, backend: str) -> None:
        i = self._index(sent)
        if i is not None:
            self.ok[backend][i] += 1
            self.reached[backend] += 1

    def record_failure(self, sent: float, cause: str, backend: str | None = None) -> None:
        """A failed request; ``backend`` only when that backend answered it (503)."""
        i = self._index(sent)
        if i is not None:
            self.failed["overload" if cause == OVERLOADED_503 else "error"][i] += 1
            self.causes[cause] += 1
            if backend is not None:
                self.reached[backend] += 1

    def peak_rate(self) -> float:
        """The highest requests/s of any bin, for the plot's scale."""
        totals = [
            sum(s[i] for s in self.ok.values()) + sum(s[i] for s in self.failed.values()) for i in range(self.bins)
        ]
        return max(totals, default=0) / self.bin

    @property
    def failures(self) -> int:
        return sum(sum(series) for series in self.failed.values())

    @property
    def requests(self) -> int:
        return sum(sum(series) for series in self.ok.values()) + self.failures

    def summary(self) -> dict[str, Any]:
        total = self.requests
        failed = self.failures
        return {
            "requests": total,
            "failed": failed,
            "failed_pct": round(100 * failed / total, 2) if total else 0.0,
            "overloaded_share_pct": round(100 * self.reached[SLOW] / total, 2) if total else 0.0,
            "answered_by_backend": {b: sum(self.ok[b]) for b in BACKENDS},
            "failure_causes": dict(self.causes.most_common()),
            "out_of_rotation_at": None if self.out_of_rotation_at is None else round(self.out_of_rotation_at, 2),
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "bin_seconds": self.bin, "ok_per_bin": self.ok, "failed_per_bin": self.failed}


# == simulation ====================================================================================


class EventLoop:
    """A minimal discrete-event loop: callbacks at virtual times, in time (then FIFO) order."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), callback, args))

    def run(self, until: float) -> None:
        while self._heap and self._heap[0][0] <= until:
            when, _, callback, args = heapq.heappop(self._heap)
            self.now = when
            callback(*args)


Done = Callable[[str], None]  # a backend's answer: "ok", "503" or "reset"
Reply = Callable[[str, "Server | None"], None]  # what the client gets, and from which backend


@dataclass(eq=False)
class Job:
    """One request inside a backend."""

    done: Done
    finished: bool = False


class Server:
    """A backend machine: ``workers`` at once, a bounded FIFO queue, exponential service times."""

    def __init__(self, name: str, loop: EventLoop, mean: float, workers: int, queue: int, rng: random.Random) -> None:
        self.name = name
        self.loop = loop
        self.mean = mean
        self.workers = workers
        self.queue_limit = queue
        self.rng = rng
        self.alive = True
        self.in_service: set[Job] = set()
        self.waiting: deque[Job] = deque()
        self.connections: set[Conn] = set()

    def submit(self, done: Done) -> None:
        job = Job(done)
        if len(self.in_service) < self.workers:
            self._start(job)
        elif len(self.waiting) < self.queue_limit:
            self.waiting.append(job)
        else:
            done("503")

    def _start(self, job: Job) -> None:
        self.in_service.add(job)
        self.loop.at(self.loop.now + self.rng.expovariate(1 / self.mean), self._finish, job)

    def _finish(self, job: Job) -> None:
        if job.finished:
            return  # lost in a crash
        job.finished = True
        self.in_service.discard(job)
        job.done("ok")
        if self.waiting and self.alive:
            self._start(self.waiting.popleft())

    def crash(self) -> None:
        """Stop: every request in the machine is lost, every connection reset, new ones refused."""
        self.alive = False
        lost = list(self.in_service) + list(self.waiting)
        self.in_service.clear()
        self.waiting.clear()
        for conn in list(self.connections):
            conn.close()
        for job in lost:
            job.finished = True
            job.done("reset")


@dataclass(eq=False)
class LbBackend:
    """lbproxy's view of one backend, with the attributes its strategies read."""

    server: Server
    weight: int = 1
    active: int = 0  # L4: live connections; L7: requests in flight
    checked_up: bool = True
    ejected: bool = False
    consecutive_failures: int = 0

    @property
    def available(self) -> bool:
        return self.checked_up and not self.ejected


@dataclass(eq=False)
class Conn:
    """A client keep-alive connection: to a backend (DNS tiers), or to lbproxy (L4/L7)."""

    server: Server | None  # the backend bytes end up at (None: lbproxy picks per request)
    lb_backend: LbBackend | None = None  # L4: the backend lbproxy spliced this connection to
    served: int = 0
    busy: bool = False
    closed: bool = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.server is not None:
            self.server.connections.discard(self)
        if self.lb_backend is not None:
            self.lb_backend.active -= 1


@dataclass(eq=False)
class SimClient:
    index: int
    rng: random.Random
    idle: list[Conn] = field(default_factory=list)  # LIFO
    address: str = ""  # DNS tiers: the cached answer ...
    expires: float = 0.0  # ... and when it runs out

    def take_idle(self) -> Conn | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        return None


class Simulation:
    """One tier over one scenario."""

    def __init__(self, scenario: Scenario, tier: Tier) -> None:
        self.s = scenario
        self.tier = tier
        self.loop = EventLoop()
        self.result = TierResult.empty(tier.key, scenario)
        seed = scenario.seed
        service_rng = random.Random(f"{seed}-service-{tier.key}")
        self.servers = {
            name: Server(
                name,
                self.loop,
                scenario.service * (scenario.slow_factor if name == SLOW else 1),
                scenario.slow_workers if name == SLOW else scenario.workers,
                scenario.queue,
                service_rng,
            )
            for name in BACKENDS
        }
        self.lb = [LbBackend(self.servers[name]) for name in BACKENDS]
        self.by_address = {IPS[name]: self.servers[name] for name in BACKENDS}
        self.dns_rotation = RoundRobin(self.lb)  # type: ignore[arg-type]
        self.least = LeastConnections(self.lb)  # type: ignore[arg-type]
        self.clients = [SimClient(i, random.Random(f"{seed}-client-{i}")) for i in range(scenario.clients)]
        self.misc_rng = random.Random(f"{seed}-misc-{tier.key}")

    # -- setup -------------------------------------------------------------------------------------

    def run(self) -> TierResult:
        s = self.s
        for client in self.clients:
            if self.tier.key.startswith("dns"):
                client.address = self._resolve()
                client.expires = self.misc_rng.uniform(0, s.ttl)
            self.loop.at(client.rng.expovariate(s.rate), self._arrival, client)
        self.loop.at(s.fail_at, self.servers[DEAD].crash)
        if self.tier.health_checked:
            first_failing = s.fail_at + self.misc_rng.uniform(0, s.check_interval)
            detected = first_failing + (s.check_fall - 1) * s.check_interval / 2
            self.loop.at(detected, self._check_down, self.lb[BACKENDS.index(DEAD)])
        self.loop.run(s.duration + 30)  # let the last requests finish
        return self.result

    def _least(self, tried: list[LbBackend]) -> LbBackend | None:
        """lbproxy's ``LeastConnections`` over this tier's pool, skipping backends already tried."""
        return self.least.pick(None, tried)  # type: ignore[arg-type,return-value]

    def _take_out(self, backend: LbBackend) -> None:
        if self.result.out_of_rotation_at is None:
            self.result.out_of_rotation_at = self.loop.now

    def _check_down(self, backend: LbBackend) -> None:
        backend.checked_up = False
        self._take_out(backend)

    def _note_failure(self, backend: LbBackend) -> None:
        """lbproxy's passive ejection (outlier detection) after ``eject_after`` in a row."""
        backend.consecutive_failures += 1
        if backend.consecutive_failures >= self.s.eject_after and not backend.ejected:
            backend.ejected = True  # for 30 s; by then the active check has it down anyway
            self._take_out(backend)

    # -- clients -----------------------------------------------------------------------------------

    def _arrival(self, client: SimClient) -> None:
        now = self.loop.now
        nxt = now + client.rng.expovariate(self.s.rate)
        if nxt < self.s.duration:
            self.loop.at(nxt, self._arrival, client)
        conn = client.take_idle()
        if conn is None:
            conn = self._connect(client, now)
            if conn is None:
                return
        conn.busy = True
        self._send(client, conn, now)

    def _resolve(self) -> str:
        """The DNS listener's answer: the next address of the rotation (b4 too, unless checked down)."""
        backend: LbBackend | None = self.dns_rotation.pick(None)  # type: ignore[assignment]
        assert backend is not None
        return IPS[backend.server.name]

    def _connect(self, client: SimClient, now: float) -> Conn | None:
        """A new connection, or None after recording the failed request."""
        if self.tier.key.startswith("dns"):
            if now >= client.expires:
                client.address = self._resolve()
                client.expires = now + self.s.ttl
            server = self.by_address[client.address]
            if not server.alive:
                self.result.record_failure(now, "connection refused")
                return None
            conn = Conn(server)
            server.connections.add(conn)
            return conn
        if self.tier.key == "l4":
            tried: list[LbBackend] = []
            while len(tried) <= self.s.retries and (backend := self._least(tried)) is not None:
                tried.append(backend)
                if not backend.server.alive:
                    self._note_failure(backend)
                    continue
                backend.active += 1
                backend.consecutive_failures = 0
                conn = Conn(backend.server, backend)
                backend.server.connections.add(conn)
                return conn
            self.result.record_failure(now, "no backend (lbproxy closed the connection)")
            return None
        return Conn(None)  # L7: a connection to lbproxy, which never fails here

    def _send(self, client: SimClient, conn: Conn, sent: float) -> None:
        def reply(status: str, server: Server | None) -> None:
            if status == "ok":
                assert server is not None
                self.result.record_ok(sent, server.name)
            elif status == "503":
                self.result.record_failure(sent, OVERLOADED_503, server.name if server else None)
            else:
                self.result.record_failure(sent, status)
            self._release(client, conn)

        if conn.server is not None:  # DNS tiers and L4: bytes go to the connection's backend
            server = conn.server

            def direct(status: str) -> None:
                if status == "reset" and conn.lb_backend is not None:
                    self._note_failure(conn.lb_backend)
                reply("connection reset" if status == "reset" else status, server)

            server.submit(direct)
        else:
            self._dispatch_l7(reply, tried=[], retried=False)

    def _dispatch_l7(self, reply: Reply, tried: list[LbBackend], retried: bool) -> None:
        """lbproxy L7: least outstanding requests; a refused connect moves on to the next backend."""
        while len(tried) <= self.s.retries and (backend := self._least(tried)) is not None:
            tried.append(backend)
            if backend.server.alive:
                self._forward_l7(backend, reply, tried, retried)
                return
            self._note_failure(backend)
        reply("502 from lbproxy (no backend left)", None)

    def _forward_l7(self, backend: LbBackend, reply: Reply, tried: list[LbBackend], retried: bool) -> None:
        """One request in flight on ``backend``, counted in the ``active`` that least-conn reads."""
        backend.active += 1

        def finished(status: str) -> None:
            backend.active -= 1
            if status != "reset":
                backend.consecutive_failures = 0
                reply(status, backend.server)
                return
            self._note_failure(backend)
            if retried:
                reply("502 from lbproxy", None)
            else:  # the reused upstream connection died: lbproxy retries the idempotent GET
                self._dispatch_l7(reply, tried, retried=True)

        backend.server.submit(finished)

    def _release(self, client: SimClient, conn: Conn) -> None:
        conn.served += 1
        conn.busy = False
        if conn.closed:
            return
        if conn.served >= self.s.reuse:
            conn.close()
            return
        client.idle.append(conn)
        self.loop.at(self.loop.now + self.s.idle_timeout, self._idle_check, conn, conn.served)

    def _idle_check(self, conn: Conn, served: int) -> None:
        if not conn.busy and conn.served == served:
            conn.close()  # idle ever since it was released: the client closes it


def simulate(scenario: Scenario) -> dict[str, TierResult]:
    return {tier.key: Simulation(scenario, tier).run() for tier in TIERS}


# == live run ======================================================================================


class LiveBackend:
    """A tiny HTTP/1.1 backend with the same queueing model as ``Server``; ``crash`` resets all."""

    def __init__(
        self, name: str, sock: socket.socket, mean: float, workers: int, queue: int, rng: random.Random
    ) -> None:
        self.name = name
        self.sock = sock
        self.mean = mean
        self.queue = queue
        self.rng = rng
        self.slots = asyncio.Semaphore(workers)
        self.waiting = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, sock=self.sock)

    def _response(self, status: int) -> bytes:
        reason = "OK" if status == 200 else "Service Unavailable"
        body = f"{self.name} {status}\n".encode()
        return (
            f"HTTP/1.1 {status} {reason}\r\nX-Backend: {self.name}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    async def _serve(self) -> int:
        if self.slots.locked() and self.waiting >= self.queue:
            return 503
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        try:
            await asyncio.sleep(self.rng.expovariate(1 / self.mean))
        finally:
            self.slots.release()
        return 200

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # GETs only: no body
                status = await self._serve()
                if writer.is_closing():
                    break  # crashed meanwhile
                writer.write(self._response(status))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    def crash(self) -> None:
        """Like a killed process: stop listening (connects are refused) and reset every connection."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            sock = writer.get_extra_info("socket")
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (OSError, AttributeError):
                pass
            writer.transport.abort()


def bind_same_port(ips: list[str]) -> list[socket.socket]:
    """Listening sockets on every IP with one port number (DNS answers carry no port)."""
    for _ in range(50):
        first = socket.create_server((ips[0], 0))
        port = first.getsockname()[1]
        socks = [first]
        try:
            for ip in ips[1:]:
                socks.append(socket.create_server((ip, port)))
            return socks
        except OSError:
            for sock in socks:
                sock.close()
    raise RuntimeError("no port free on all backend addresses")


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (the dns listener needs both)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no free port")


def open_log(path: Path) -> BinaryIO:
    """lbproxy's stdout and stderr go here (the child keeps its own descriptor)."""
    return open(path, "wb")  # the caller closes it once the child has inherited it


@dataclass
class LiveSetup:
    scenario: Scenario
    ports: dict[str, int]  # tier -> backend port (the same on b1..b4's IPs)
    dns_port: int
    l4_port: int
    l7_port: int
    admin_port: int

    def config(self) -> str:
        """lbproxy's YAML: one pool per tier (separate connection counts), one listener each."""
        s = self.scenario
        check = f"health_check: {{interval: {s.check_interval}, timeout: 0.5, unhealthy_threshold: {s.check_fall}}}"

        def pool(tier: str, extra: str) -> str:
            backends = ", ".join(f"{IPS[b]}:{self.ports[tier]}" for b in BACKENDS)
            return f"  {tier}:\n    backends: [{backends}]\n    retries: {s.retries}\n{extra}"

        return (
            f"admin: {{bind: 127.0.0.1:{self.admin_port}}}\n"
            "drain_timeout: 1s\n"
            "pools:\n"
            + pool("dns", "    # no health check: blind round robin\n")
            + pool("dns-health", f"    {check}\n")
            + pool("l4", f"    strategy: least_connections\n    {check}\n")
            + pool("l7", f"    strategy: least_connections\n    {check}\n")
            + "listeners:\n"
            f"  - {{name: dns, mode: dns, bind: 127.0.0.1:{self.dns_port}, zone: tiers.test, ttl: {s.ttl},"
            " max_answers: 1, records: {blind: dns, aware: dns-health}}\n"
            f"  - {{name: l4, mode: tcp, bind: 127.0.0.1:{self.l4_port}, pool: l4}}\n"
            f"  - {{name: l7, mode: http, bind: 127.0.0.1:{self.l7_port}, routes: [{{pool: l7}}]}}\n"
        )


class RequestFailed(Exception):
    def __init__(self, cause: str, backend: str | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.backend = backend


@dataclass(eq=False)
class LiveConn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    backend: str | None = None  # who answered last (L4: fixed for the connection)
    served: int = 0
    busy: bool = False
    closed: bool = False

    def usable(self) -> bool:
        return not self.closed and not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()


REQUEST = b"GET / HTTP/1.1\r\nHost: tiers.test\r\n\r\n"
CLIENT_TIMEOUT = 5.0


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status and headers of one response; its body is read and dropped (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers


class LiveClient:
    """One open-loop client of one tier, with a LIFO pool of keep-alive connections."""

    def __init__(self, run: LiveRun, tier: Tier, index: int) -> None:
        self.run = run
        self.tier = tier
        self.index = index
        self.rng = random.Random(f"{run.scenario.seed}-client-{index}")  # arrivals: the same in every tier
        self.idle: list[LiveConn] = []
        self.address = ""
        self.expires = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    async def resolve(self) -> str:
        import dns.asyncquery
        import dns.message

        name = "blind.tiers.test" if self.tier.key == "dns" else "aware.tiers.test"
        query = dns.message.make_query(name, "A")
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=self.run.setup.dns_port, timeout=2)
        if not answer.answer:
            raise RequestFailed("no address in the DNS answer")
        self.expires = self.run.now() + answer.answer[0].ttl
        return str(answer.answer[0][0].address)

    async def connect(self) -> LiveConn:
        setup = self.run.setup
        if self.tier.key.startswith("dns"):
            if self.run.now() >= self.expires:
                self.address = await self.resolve()
            host, port, backend = self.address, setup.ports[self.tier.key], self.run.names[self.address]
        else:
            host, port, backend = "127.0.0.1", setup.l4_port if self.tier.key == "l4" else setup.l7_port, None
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            raise RequestFailed("connection refused", None) from None
        return LiveConn(reader, writer, backend)

    def take_idle(self) -> LiveConn | None:
        while self.idle:
            conn = self.idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def request(self, sent: float) -> None:
        result = self.run.results[self.tier.key]
        conn: LiveConn | None = None
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT):
                conn = self.take_idle() or await self.connect()
                conn.busy = True
                conn.writer.write(REQUEST)
                status, headers = await read_response(conn.reader)
        except RequestFailed as failure:
            result.record_failure(sent, failure.cause, failure.backend)
            return
        except TimeoutError:
            result.record_failure(sent, "client timeout")
            if conn is not None:
                conn.close()
            return
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            result.record_failure(sent, "connection reset")
            if conn is not None:
                conn.close()
            return
        backend = headers.get("x-backend")
        conn.backend = backend or conn.backend
        if status == 200 and backend:
            result.record_ok(sent, backend)
        elif status == 503 and backend:
            result.record_failure(sent, OVERLOADED_503, backend)
        else:
            result.record_failure(sent, f"{status} from lbproxy")
        self._release(conn, headers)

    def _release(self, conn: LiveConn, headers: dict[str, str]) -> None:
        conn.served += 1
        conn.busy = False
        if conn.served >= self.run.scenario.reuse or headers.get("connection", "").lower() == "close":
            conn.close()
            return
        self.idle.append(conn)
        served = conn.served
        asyncio.get_running_loop().call_later(
            self.run.scenario.idle_timeout, lambda: conn.close() if not conn.busy and conn.served == served else None
        )

    async def loop(self) -> None:
        s = self.run.scenario
        if self.tier.key.startswith("dns"):  # a warm cache with a random remaining lifetime
            self.address = await self.resolve()
            self.expires = self.run.now() + random.Random(f"{s.seed}-dns-{self.index}").uniform(0, s.ttl)
        nxt = self.rng.expovariate(s.rate)
        while nxt < s.duration:
            await asyncio.sleep(max(0.0, nxt - self.run.now()))
            task = asyncio.create_task(self.request(nxt))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            nxt += self.rng.expovariate(s.rate)
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=CLIENT_TIMEOUT + 1)
        for conn in self.idle:
            conn.close()


class LiveRun:
    """Backends in this process, lbproxy as a subprocess, clients of every tier at once."""

    def __init__(self, scenario: Scenario, workdir: Path) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.results = {tier.key: TierResult.empty(tier.key, scenario) for tier in TIERS}
        self.backends: dict[str, dict[str, LiveBackend]] = {}
        self.names = {ip: name for name, ip in IPS.items()}
        self.started = 0.0
        self.proc: asyncio.subprocess.Process | None = None
        self.setup: LiveSetup  # set by ``run`` once the ports are known

    def now(self) -> float:
        return time.monotonic() - self.started

    async def start_backends(self) -> dict[str, int]:
        s = self.scenario
        ports = {}
        for tier in TIERS:
            socks = bind_same_port([IPS[b] for b in BACKENDS])
            ports[tier.key] = socks[0].getsockname()[1]
            rng = random.Random(f"{s.seed}-service-{tier.key}")
            self.backends[tier.key] = {}
            for name, sock in zip(BACKENDS, socks):
                slow = name == SLOW
                backend = LiveBackend(
                    name,
                    sock,
                    s.service * (s.slow_factor if slow else 1),
                    s.slow_workers if slow else s.workers,
                    s.queue,
                    rng,
                )
                await backend.start()
                self.backends[tier.key][name] = backend
        return ports

    async def start_lbproxy(self, setup: LiveSetup) -> None:
        path = self.workdir / "lbproxy.yaml"
        path.write_text(setup.config())
        log = open_log(self.workdir / "lbproxy.log")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lbproxy", "run", "-c", str(path), stdout=log, stderr=log, env=env, cwd=ROOT
        )
        log.close()
        async with asyncio.timeout(15):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"lbproxy exited: {(self.workdir / 'lbproxy.log').read_text()[-2000:]}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", setup.admin_port)
                    writer.close()
                    return
                except OSError:
                    await asyncio.sleep(0.1)

    async def stop_lbproxy(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def watch_rotation(self, setup: LiveSetup) -> None:
        """Poll lbproxy's /status: when does each checked pool stop handing out b4?"""
        dead = f"{IPS[DEAD]}:"
        while self.now() < self.scenario.duration:
            await asyncio.sleep(0.1)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", setup.admin_port)
                writer.write(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                body = (await reader.read()).split(b"\r\n\r\n", 1)[1]
                writer.close()
                status = json.loads(body)
            except (OSError, ValueError, IndexError):
                continue
            for pool in status["pools"]:
                result = self.results.get(pool["name"])
                if result is None or result.out_of_rotation_at is not None or pool["name"] == "dns":
                    continue
                for backend in pool["backends"]:
                    if backend["address"].startswith(dead) and backend["state"] != "healthy":
                        result.out_of_rotation_at = self.now()

    async def fail_later(self) -> None:
        await asyncio.sleep(max(0.0, self.scenario.fail_at - self.now()))
        for tier in TIERS:
            self.backends[tier.key][DEAD].crash()

    async def run(self) -> dict[str, TierResult]:
        ports = await self.start_backends()
        setup = LiveSetup(self.scenario, ports, free_port(), free_port(), free_port(), free_port())
        self.setup = setup
        try:
            await self.start_lbproxy(setup)
            await asyncio.sleep(0.5)  # first health checks
            self.started = time.monotonic()
            clients = [LiveClient(self, tier, i) for tier in TIERS for i in range(self.scenario.clients)]
            extra = [asyncio.create_task(self.fail_later()), asyncio.create_task(self.watch_rotation(setup))]
            await asyncio.gather(*(client.loop() for client in clients))
            for task in extra:
                task.cancel()
        finally:
            await self.stop_lbproxy()
            for tier_backends in self.backends.values():
                for backend in tier_backends.values():
                    backend.crash()
        return self.results


def live(scenario: Scenario) -> dict[str, TierResult]:
    with tempfile.TemporaryDirectory(prefix="lbproxy-tiers-") as tmp:
        runner = LiveRun(scenario, Path(tmp))
        try:
            import uvloop

            return uvloop.run(runner.run())
        except ImportError:
            return asyncio.run(runner.run())


# == output ========================================================================================

COLORS = {"b1": "#4C72B0", "b2": "#DD8452", "b3": "#55A868", "b4": "#8172B3"}
FAILURE_COLORS = {"error": "#B22234", "overload": "#EE9A9A"}


def backend_label(name: str, scenario: Scenario) -> str:
    if name == SLOW:
        return f"{name} · overloaded ({scenario.slow_factor:g}× slower)"
    if name == DEAD:
        return f"{name} · fails at {scenario.fail_at:g} s"
    return name


def plot(results: dict[str, TierResult], scenario: Scenario, heading: str, path: Path) -> None:
    """One row per tier: requests answered per backend, stacked, with failed requests on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TIERS), 1, figsize=(11, 2.55 * len(TIERS) + 0.9), sharex=True, sharey=True)
    for ax, tier in zip(axes, TIERS):
        result = results[tier.key]
        xs = [i * result.bin for i in range(result.bins + 1)]  # bin edges; the last value is repeated
        series = [result.ok[b] for b in BACKENDS] + [result.failed[k] for k in FAILURE_KINDS]
        layers = ax.stackplot(
            xs,
            *[[count / result.bin for count in s + s[-1:]] for s in series],
            colors=[COLORS[b] for b in BACKENDS] + [FAILURE_COLORS[k] for k in FAILURE_KINDS],
            labels=[backend_label(b, scenario) for b in BACKENDS] + list(FAILURE_KINDS.values()),
            step="post",
            linewidth=0,
        )
        layers[-1].set_hatch("////")
        layers[-1].set_edgecolor("white")
        ax.axvline(scenario.fail_at, color="black", linestyle="--", linewidth=1)
        if result.out_of_rotation_at is not None:
            ax.axvline(result.out_of_rotation_at, color="black", linestyle=":", linewidth=1)
        summary = result.summary()
        if result.out_of_rotation_at is None:
            rotation = "b4 stays in the DNS rotation"
        else:
            rotation = f"b4 out of rotation {result.out_of_rotation_at - scenario.fail_at:.1f} s after failing"
        ax.set_title(tier.title, loc="left", fontsize=10.5, fontweight="bold")
        ax.text(
            0.995,
            0.94,
            f"failed: {summary['failed']:,} of {summary['requests']:,} ({summary['failed_pct']:.1f}%)\n"
            f"b2 (overloaded) got {summary['overloaded_share_pct']:.1f}% of requests\n{rotation}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9, "edgecolor": "#999999"},
        )
        ax.set_ylabel("requests/s")
        ax.set_xlim(0, scenario.duration)
        ax.grid(axis="y", alpha=0.3)
    peak = max(r.peak_rate() for r in results.values())
    axes[0].set_ylim(0, peak * 1.45)
    axes[-1].set_xlabel(
        f"seconds  (dashed: b4 fails; dotted: lbproxy stops sending to b4)  ·  DNS TTL {scenario.ttl} s  ·  "
        f"{scenario.clients} clients × {scenario.rate:g} req/s per tier"
    )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.955))
    fig.suptitle(heading, fontsize=12.5, y=0.99)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(label: str, results: dict[str, TierResult]) -> None:
    print(f"\n{label}")
    print(
        f"  {'tier':<12} {'requests':>9} {'failed':>8} {'failed%':>8} {'b2 share':>9} {'b4 out at':>10}  main failure causes"
    )
    for tier in TIERS:
        s = results[tier.key].summary()
        out = "-" if s["out_of_rotation_at"] is None else f"{s['out_of_rotation_at']:.1f} s"
        causes = ", ".join(f"{cause} {count}" for cause, count in list(s["failure_causes"].items())[:3])
        print(
            f"  {tier.key:<12} {s['requests']:>9,} {s['failed']:>8,} {s['failed_pct']:>7.1f}% "
            f"{s['overloaded_share_pct']:>8.1f}% {out:>10}  {causes}"
        )


def report(results: dict[str, TierResult], scenario: Scenario) -> dict[str, Any]:
    return {"scenario": asdict(scenario), "tiers": {key: r.to_json() for key, r in results.items()}}


def write_json(path: Path, numbers: dict[str, Any]) -> Path:
    path.write_text(json.dumps(numbers, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--live", action="store_true", help="also run the live comparison on loopback (~45 s)")
    parser.add_argument("--seed", type=int, default=STORY.seed)
    parser.add_argument("--no-docs", action="store_true", help="do not copy the simulation PNG to docs/")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)

    story, compressed = replace(STORY, seed=args.seed), replace(LIVE, seed=args.seed)
    started = time.perf_counter()
    sim, sim_compressed = simulate(story), simulate(compressed)
    print(f"simulation: {time.perf_counter() - started:.1f} s")
    print_table(f"simulation (T={story.duration:g} s, TTL {story.ttl} s, b4 fails at {story.fail_at:g} s)", sim)
    print_table(f"simulation at the live run's scale (T={LIVE.duration:g} s, TTL {LIVE.ttl} s)", sim_compressed)
    png = RESULTS / "tiers.png"
    plot(sim, story, "Simulation: one backend overloaded (b2), one failing (b4), four ways to balance", png)
    numbers = {"simulation": report(sim, story), "simulation_at_live_scale": report(sim_compressed, compressed)}
    written = [png, write_json(RESULTS / "tiers.json", numbers)]
    if not args.no_docs:
        DOCS_PNG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, DOCS_PNG)
        written.append(DOCS_PNG)

    if args.live:
        started = time.perf_counter()
        results = live(compressed)
        print(f"\nlive run: {time.perf_counter() - started:.1f} s")
        print_table(f"live (T={LIVE.duration:g} s, TTL {LIVE.ttl} s, b4 fails at {LIVE.fail_at:g} s)", results)
        live_png = RESULTS / "tiers-live.png"
        plot(results, compressed, "Live run on loopback: lbproxy with 4 in-process backends", live_png)
        written += [live_png, write_json(RESULTS / "tiers-live.json", {"live": report(results, compressed)})]
    print("\nwrote " + ", ".join(str(path.relative_to(ROOT)) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())

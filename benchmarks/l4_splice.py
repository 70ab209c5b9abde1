"""L4 bulk throughput: lbproxy's Protocol splicer against a kernel zero-copy ``os.splice`` relay.

Usage::

    python benchmarks/l4_splice.py [--gigabytes 2] [--rounds 3] [--modes plain,splice]

Each round starts, in separate processes, a sink (reads and discards), the proxy under test and a
source (sends ``--gigabytes`` as fast as it can, then half-closes). The proxy forwards source →
sink. Reported per mode, median of the rounds: throughput (GB/s, wall clock from first byte sent
to the sink seeing EOF) and the proxy process's CPU seconds per GB (utime + stime from
``/proc/PID/stat``), which is the figure that matters when the proxy is not the only thing on the
machine. Modes alternate round by round so drift on a noisy machine hits both.

- ``plain``: the real lbproxy daemon (uvloop, ``lbproxy.l4.splicer``) with one tcp listener.
- ``lbproxy-splice``: the same with ``splice: true`` (``lbproxy.l4.splice``).
- ``protocol``: a minimal relay with the same mechanism as ``plain`` (two asyncio Protocols,
  ``transport.write`` of each chunk read) and none of its features: it shows what lbproxy's
  bookkeeping costs on top of the mechanism.
- ``splice``: a minimal relay on uvloop's ``add_reader``/``add_writer`` that moves bytes with
  ``os.splice`` through a pipe (socket → pipe → socket), so Python never touches the payload.
  It only relays one direction and has none of the splicer's features: it is the upper bound a
  splice-based data path could reach.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 1 << 20
MESSAGE = 1024
PIPE_SIZE = 1 << 20


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_sink(listen: socket.socket, done: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Bulk: read and discard until EOF, then report (bytes, time)."""
    conn, _ = listen.accept()
    buf = bytearray(CHUNK)
    total = 0
    while True:
        n = conn.recv_into(buf)
        if not n:
            break
        total += n
    done.put((total, time.perf_counter()))
    conn.close()


def run_echo(listen: socket.socket, done: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Ping-pong: echo every message back until EOF, then report (bytes, time)."""
    conn, _ = listen.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    total = 0
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
        total += len(data)
    done.put((total, time.perf_counter()))
    conn.close()


def run_source(port: int, nbytes: int, started: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    sock = socket.create_connection(("127.0.0.1", port))
    payload = memoryview(b"x" * CHUNK)
    started.put(time.perf_counter())
    sent = 0
    while sent < nbytes:
        sock.sendall(payload)
        sent += CHUNK
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    sock.close()


def run_pingpong(port: int, count: int, started: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """``count`` round trips of one MESSAGE-byte message each, one at a time."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = b"p" * MESSAGE
    started.put(time.perf_counter())
    for _ in range(count):
        sock.sendall(message)
        got = 0
        while got < MESSAGE:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("pingpong: connection closed early")
            got += len(data)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    sock.close()


def run_lbproxy_splice(listen: socket.socket, sink_port: int) -> None:
    run_plain_proxy(listen, sink_port, splice=True)


def run_plain_proxy(listen: socket.socket, sink_port: int, splice: bool = False) -> None:
    import uvloop

    from lbproxy.config.loader import load_config_text
    from lbproxy.runtime.daemon import Daemon

    text = textwrap.dedent(
        f"""
        pools:
          sink:
            backends: ["127.0.0.1:{sink_port}"]
        listeners:
          - name: bulk
            bind: 127.0.0.1:{listen.getsockname()[1]}
            mode: tcp
            pool: sink
            splice: {"true" if splice else "false"}
        """
    )

    async def main() -> None:
        daemon = Daemon(load_config_text(text, "<bench>"), sockets={"bulk": listen})
        await daemon.start()
        await asyncio.Event().wait()

    uvloop.run(main())


class _Half(asyncio.Protocol):
    """One side of the minimal Protocol relay: writes what it reads to ``peer``."""

    def __init__(self, peer: _Half | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.resume_reading()


def run_protocol_proxy(listen: socket.socket, sink_port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()

        class Downstream(_Half):
            pending = b""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                transport.pause_reading()  # type: ignore[attr-defined]
                self.task = loop.create_task(self.dial())

            def data_received(self, data: bytes) -> None:
                if self.peer is None:
                    self.pending += data  # read before the pause took effect
                else:
                    super().data_received(data)

            async def dial(self) -> None:
                _, up = await loop.create_connection(lambda: _Half(self), "127.0.0.1", sink_port)
                self.peer = up
                assert self.transport is not None and up.transport is not None
                if self.pending:
                    up.transport.write(self.pending)
                self.transport.resume_reading()

        server = await loop.create_server(Downstream, sock=listen)
        await server.serve_forever()

    uvloop.run(main())


class SpliceRelay:
    """One direction, src → pipe → dst, driven by readiness callbacks; no payload in Python."""

    def __init__(self, loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket) -> None:
        self.loop = loop
        self.src = src
        self.dst = dst
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            import fcntl

            fcntl.fcntl(self.wfd, 1031, PIPE_SIZE)  # F_SETPIPE_SZ
        except OSError:
            pass
        self.in_pipe = 0
        self.eof = False
        loop.add_reader(src.fileno(), self.on_readable)

    def on_readable(self) -> None:
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        try:
            n = os.splice(self.src.fileno(), self.wfd, PIPE_SIZE, flags=flags)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if n == 0:
            self.eof = True
            self.loop.remove_reader(self.src.fileno())
        self.in_pipe += n
        self.flush()

    def flush(self) -> None:
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        while self.in_pipe:
            try:
                n = os.splice(self.rfd, self.dst.fileno(), self.in_pipe, flags=flags)
            except BlockingIOError:
                self.loop.remove_reader(self.src.fileno())
                self.loop.add_writer(self.dst.fileno(), self.on_writable)
                return
            self.in_pipe -= n
        if self.eof:
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def on_writable(self) -> None:
        self.loop.remove_writer(self.dst.fileno())
        self.flush()
        if not self.in_pipe and not self.eof:
            self.loop.add_reader(self.src.fileno(), self.on_readable)


def run_splice_proxy(listen: socket.socket, sink_port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        listen.setblocking(False)
        relays = []
        while True:
            client, _ = await loop.sock_accept(listen)
            client.setblocking(False)
            upstream = socket.socket()
            upstream.setblocking(False)
            await loop.sock_connect(upstream, ("127.0.0.1", sink_port))
            relays.append((client, upstream, SpliceRelay(loop, client, upstream), SpliceRelay(loop, upstream, client)))

    uvloop.run(main())


def one_round(mode: str, workload: str, amount: int) -> tuple[float, float]:
    """One transfer through ``mode``: (rate, proxy CPU seconds per unit).

    ``bulk``: ``amount`` bytes; rate in GB/s, CPU in s/GB. ``pingpong``: ``amount`` round trips;
    rate in round trips/s, CPU in microseconds per round trip.
    """
    ctx = multiprocessing.get_context("fork")
    sink_sock = socket.create_server(("127.0.0.1", 0))
    proxy_sock = socket.create_server(("127.0.0.1", 0))
    done: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    started: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    sink = ctx.Process(target=run_sink if workload == "bulk" else run_echo, args=(sink_sock, done))
    sink.start()
    target = {"plain": run_plain_proxy, "lbproxy-splice": run_lbproxy_splice, "protocol": run_protocol_proxy,
              "splice": run_splice_proxy}[mode]
    proxy = ctx.Process(target=target, args=(proxy_sock, sink_sock.getsockname()[1]))
    proxy.start()
    time.sleep(1.0)  # let the proxy import and start
    assert proxy.pid is not None
    cpu_before = cpu_seconds(proxy.pid)
    client = run_source if workload == "bulk" else run_pingpong
    source = ctx.Process(target=client, args=(proxy_sock.getsockname()[1], amount, started))
    source.start()
    t0 = started.get(timeout=60)
    total, t1 = done.get(timeout=600)
    cpu = cpu_seconds(proxy.pid) - cpu_before
    for p in (source, sink, proxy):
        p.kill()
        p.join(5)
    sink_sock.close()
    proxy_sock.close()
    expected = amount if workload == "bulk" else amount * MESSAGE
    if total != expected:
        raise SystemExit(f"{mode}: sink got {total} bytes, expected {expected}")
    if workload == "bulk":
        gigabytes = amount / 1e9
        return gigabytes / (t1 - t0), cpu / gigabytes
    return amount / (t1 - t0), cpu / amount * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=2.0, help="bulk: bytes per round")
    parser.add_argument("--round-trips", type=int, default=20000, help="pingpong: round trips per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="plain,lbproxy-splice,protocol,splice")
    parser.add_argument("--workloads", default="bulk,pingpong")
    args = parser.parse_args()
    modes = args.modes.split(",")
    print(f"{os.cpu_count()} CPUs, median of {args.rounds} rounds")
    for workload in args.workloads.split(","):
        if workload == "bulk":
            amount = int(args.gigabytes * 1e9) // CHUNK * CHUNK
            units = ("GB/s", "CPU-s/GB")
        else:
            amount = args.round_trips
            units = ("round trips/s", f"CPU-us per {MESSAGE}-byte round trip")
        results: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:  # rotate the order
                rate, cpu = one_round(mode, workload, amount)
                results[mode].append((rate, cpu))
                print(f"  {workload} round {r + 1} {mode:7s} {rate:9.2f} {units[0]}  {cpu:7.3f} {units[1]}", flush=True)
        for mode, rows in results.items():
            rate = statistics.median(r for r, _ in rows)
            cpu = statistics.median(c for _, c in rows)
            print(f"{workload:8s} {mode:7s} {rate:9.2f} {units[0]}  {cpu:7.3f} {units[1]}")


if __name__ == "__main__":
    main()

"""Hostile clients: slowloris and slow bodies must not delay honest clients, and get closed."""

from __future__ import annotations

import asyncio
import resource
import statistics
import time

from tests.client import Connection

SLOW_CLIENTS = 1000


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


async def _honest_latencies(host: str, port: int, count: int) -> list[float]:
    conn = await Connection.open(host, port)
    latencies = []
    try:
        for i in range(count):
            start = time.perf_counter()
            response = await conn.request(path=f"/honest/{i}")
            latencies.append(time.perf_counter() - start)
            assert response.status == 200
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return latencies


async def _slow_client(host: str, port: int, body: bool, results: list[bytes], cut_after: list[float]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await asyncio.open_connection(host, port)
    answer = asyncio.ensure_future(reader.read(200))
    try:
        if body:
            writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        else:
            writer.write(b"GET / HTTP/1.1\r\n")
        for _ in range(40):  # at most ~8 s of trickling one byte every 0.2 s
            await asyncio.wait([answer], timeout=0.2)
            if answer.done():
                break
            writer.write(b"a" if body else b"X")
        async with asyncio.timeout(10):
            results.append(await answer)
        cut_after.append(loop.time() - start)
    except ConnectionError:
        results.append(b"reset")
        cut_after.append(loop.time() - start)
    finally:
        if not answer.done():
            answer.cancel()
        writer.close()


async def test_slowloris_and_slow_bodies_do_not_delay_honest_clients(make_daemon, http_backends) -> None:
    _raise_fd_limit(4 * SLOW_CLIENTS + 200)
    web = await http_backends(1)
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{web[0]}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
            limits: {{request_header_timeout: 2s, client_timeout: 2s}}
        """
    )
    host, port = daemon.listener_address("public")
    baseline = await _honest_latencies(host, port, 100)

    results: list[bytes] = []
    cut_after: list[float] = []
    started = time.perf_counter()
    attackers = [
        asyncio.ensure_future(_slow_client(host, port, i % 2 == 1, results, cut_after)) for i in range(SLOW_CLIENTS)
    ]
    await asyncio.sleep(0.5)  # the attack is under way
    under_attack = await _honest_latencies(host, port, 100)
    async with asyncio.timeout(30):
        await asyncio.gather(*attackers)
    elapsed = time.perf_counter() - started

    p50_base, p50_attack = statistics.median(baseline), statistics.median(under_attack)
    p99_attack = sorted(under_attack)[98]
    print(
        f"\nhonest p50 {p50_base * 1e3:.2f} ms without attack, {p50_attack * 1e3:.2f} ms with "
        f"{SLOW_CLIENTS} slow clients (p99 {p99_attack * 1e3:.2f} ms); slowest attacker cut after "
        f"{max(cut_after):.1f} s; all done in {elapsed:.1f} s"
    )
    assert max(cut_after) < 4.0, "2 s header/body timeouts (plus slack) cut every trickling client"
    assert p99_attack < 0.25, "honest requests are not noticeably delayed"
    assert len(results) == SLOW_CLIENTS
    answered_408 = sum(1 for r in results if r.startswith(b"HTTP/1.1 408"))
    assert answered_408 >= SLOW_CLIENTS * 0.95, f"only {answered_408} slow clients got 408"
    async with asyncio.timeout(5):
        while daemon.listeners["public"].connections:
            await asyncio.sleep(0.05)


async def test_per_client_connection_cap_and_request_rate_limit(make_daemon, http_backends) -> None:
    from tests.client import Connection, fetch

    web = await http_backends(1)
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{web[0]}"]
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
            max_connections_per_client: 3
            rate_limit: {{requests_per_second: 5, burst: 5}}
            trusted_proxies: ["127.0.0.2"]
        """
    )
    host, port = daemon.listener_address("public")
    held = [await Connection.open(host, port) for _ in range(3)]
    extra = await Connection.open(host, port)
    assert await extra.closed_by_peer(), "a fourth connection from the same client is refused"
    await extra.close()
    for conn in held:
        await conn.close()
    await asyncio.sleep(0.05)
    statuses = [(await fetch(host, port)).status for _ in range(8)]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    r = await fetch(host, port)
    assert r.status == 429 and r.header("Retry-After") == "1"
    await asyncio.sleep(0.25)
    assert (await fetch(host, port)).status == 200, "tokens come back at the configured rate"
    # behind a trusted proxy, the client is the address that proxy saw
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.2", 0))
    conn = Connection(reader, writer)
    for i in range(5):
        r = await conn.request(headers={"X-Forwarded-For": f"10.1.1.{i}"})
        assert r.status == 200, "different clients behind one proxy each get their own bucket"
    await conn.close()


async def test_endless_response_body_is_cut_by_the_pool_limit(make_daemon, servers) -> None:
    """A backend that never stops sending is cut at max_response_body_bytes; nothing leaks."""

    class Endless(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.paused = False

        def data_received(self, data: bytes) -> None:
            if b"\r\n\r\n" in data:
                self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                self.pump()

        def pump(self) -> None:
            if self.transport.is_closing() or self.paused:
                return
            self.transport.write(b"10000\r\n" + b"e" * 0x10000 + b"\r\n")
            asyncio.get_running_loop().call_soon(self.pump)

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            self.pump()

    server = await servers(Endless)
    daemon = await make_daemon(
        f"""
        pools:
          web:
            backends: ["127.0.0.1:{server.sockets[0].getsockname()[1]}"]
            max_response_body_bytes: 1048576
        listeners:
          - {{name: public, bind: 127.0.0.1:0, routes: [{{pool: web}}]}}
        """
    )
    host, port = daemon.listener_address("public")
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    received = 0
    async with asyncio.timeout(10):
        try:
            while data := await reader.read(1 << 16):
                received += len(data)
        except ConnectionResetError:
            pass
    writer.close()
    assert 1 << 20 <= received < 4 << 20, f"cut near the limit, got {received} bytes"
    backend = daemon.pools["web"].backends[0]
    assert backend.errors.get("bad_response") == 1
    async with asyncio.timeout(5):
        while daemon.listeners["public"].connections or backend.active:
            await asyncio.sleep(0.05)

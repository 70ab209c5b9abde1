"""DNS discovery (``- dns: NAME:PORT``), against a real DNS server: dnsmasq, started by the tests.

dnsmasq serves names from a hosts file on a loopback port; a test rewrites the file and sends
SIGHUP to change the records. The backends listen on 127.0.0.2-127.0.0.5 (all loopback on Linux)
on one shared port, as the addresses of one DNS name do.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO

import dns.nameserver
import dns.resolver
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbproxy.config.loader import load_config_text
from lbproxy.config.model import Address, BackendConfig
from lbproxy.discovery.members import (
    discovered_backends,
    effective_pool_config,
    from_wire,
    to_wire,
)
from lbproxy.errors import ConfigError
from tests.client import Connection, fetch
from tests.lbproxy_process import LbProcess


def find_dnsmasq() -> str:
    path = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.access("/usr/sbin/dnsmasq", os.X_OK) else None)
    if path is None:
        pytest.fail("dnsmasq is not installed (Debian: apt-get install dnsmasq-base; .ci/run installs it)")
    return path


def free_udp_and_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no free port for dnsmasq")


class Dnsmasq:
    """A dnsmasq answering for ``*.test`` from a hosts file that ``set`` rewrites."""

    def __init__(self, directory: Path) -> None:
        self.hosts = directory / "hosts"
        self.log = directory / "dnsmasq.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file: IO[bytes] | None = None

    async def start(self, records: dict[str, list[str]]) -> None:
        self._write(records)
        self.port = free_udp_and_tcp_port()
        self.log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                find_dnsmasq(), "--keep-in-foreground", "--log-facility=-", f"--port={self.port}",
                "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                f"--addn-hosts={self.hosts}", "--local=/test/", "--conf-file=/dev/null", "--pid-file=",
                f"--user={getpass.getuser()}", "--local-ttl=3",
            ],
            stdout=subprocess.DEVNULL, stderr=self.log_file,
        )  # fmt: skip
        await self.wait_for(records)

    def _write(self, records: dict[str, list[str]]) -> None:
        self.hosts.write_text("".join(f"{ip} {name}\n" for name, ips in records.items() for ip in ips))

    def ask(self, name: str) -> list[str]:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", self.port)]
        resolver.lifetime = 1
        try:
            return sorted(r.address for r in resolver.resolve(name, "A"))
        except dns.resolver.NXDOMAIN:
            return []

    async def wait_for(self, records: dict[str, list[str]]) -> None:
        """Until dnsmasq answers ``records`` (it is up and has read the file)."""
        async with asyncio.timeout(10):
            while True:
                try:
                    answers = {name: await asyncio.to_thread(self.ask, name) for name in records}
                except dns.exception.DNSException:
                    answers = {}
                if answers == {name: sorted(ips) for name, ips in records.items()}:
                    return
                await asyncio.sleep(0.05)

    async def set(self, records: dict[str, list[str]]) -> None:
        """New records: rewrite the hosts file and SIGHUP (dnsmasq re-reads it, cache cleared)."""
        self._write(records)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        await self.wait_for({n: ips for n, ips in records.items() if ips})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


@pytest.fixture
async def dnsmasq(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, list[str]]], Awaitable[Dnsmasq]]]:
    made: list[Dnsmasq] = []

    async def factory(records: dict[str, list[str]]) -> Dnsmasq:
        server = Dnsmasq(tmp_path)
        made.append(server)
        await server.start(records)
        return server

    yield factory
    for server in made:
        server.stop()


class NamedBackend(asyncio.Protocol):
    """HTTP/1.1 answering ``{"backend": NAME}``; ``GET /slow`` streams 1 MiB over about a second."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            if head.startswith(b"GET /slow "):
                self._slow()
                continue
            body = json.dumps({"backend": self.name}).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def _slow(self) -> None:
        total, pieces = 1 << 20, 16
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        loop = asyncio.get_running_loop()
        for i in range(pieces):
            loop.call_later(0.06 * (i + 1), self._piece, total // pieces)

    def _piece(self, size: int) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"s" * size)


@pytest.fixture
async def loopback_backends() -> AsyncIterator[Callable[[list[str]], Awaitable[int]]]:
    """``await loopback_backends(["127.0.0.2", ...])``: a NamedBackend on each host, one shared port."""
    servers: list[asyncio.AbstractServer] = []

    async def factory(hosts: list[str]) -> int:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            made: list[asyncio.AbstractServer] = []
            try:
                first = await loop.create_server(lambda: NamedBackend(hosts[0]), hosts[0], 0)
                made.append(first)
                port = int(first.sockets[0].getsockname()[1])
                for host in hosts[1:]:
                    made.append(await loop.create_server(lambda h=host: NamedBackend(h), host, port))  # type: ignore[misc]
            except OSError:
                for server in made:
                    server.close()
                continue
            servers.extend(made)
            return port
        raise AssertionError("no port free on every loopback address")

    yield factory
    for server in servers:
        server.close()


def pool_config(port: int, dns_port: int, extra: str = "") -> str:
    return f"""
        admin: {{bind: '127.0.0.1:0'}}
        pools:
          web:
            backends:
              - dns: api.test:{port}
            resolvers: ["127.0.0.1:{dns_port}"]
            resolve_interval: 0.1s
            health_check: {{interval: 0.1s, timeout: 0.5s}}
            {extra}
        listeners:
          - name: public
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
        """


async def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def answered_by(host: str, port: int, count: int) -> Counter[str]:
    responses = await asyncio.gather(*(fetch(host, port) for _ in range(count)))
    assert all(r.status == 200 for r in responses), [r.status for r in responses]
    return Counter(r.json()["backend"] for r in responses)


async def test_dns_backends_follow_the_records(make_daemon, dnsmasq, loopback_backends, caplog) -> None:
    port = await loopback_backends(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    server = await dnsmasq({"api.test": ["127.0.0.2", "127.0.0.3"]})
    daemon = await make_daemon(pool_config(port, server.port))
    pool = daemon.pools["web"]
    def labels() -> set[str]:
        return {b.label for b in pool.backends}

    assert labels() == {f"127.0.0.2:{port}", f"127.0.0.3:{port}"}, "looked up before the first request"
    host, lb_port = daemon.listener_address("public")
    await wait_until(lambda: all(daemon.health.pools["web"].records[b].checks_passed for b in pool.backends))
    assert set(await answered_by(host, lb_port, 20)) == {"127.0.0.2", "127.0.0.3"}

    # a long download from .2 is under way when .2 leaves DNS: it finishes
    download = await Connection.open(host, lb_port)
    await download.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_until(lambda: pool.by_label[f"127.0.0.2:{port}"].active == 1 or pool.by_label[f"127.0.0.3:{port}"].active == 1)
    slow_on = "127.0.0.2" if pool.by_label[f"127.0.0.2:{port}"].active else "127.0.0.3"
    keep = "127.0.0.3" if slow_on == "127.0.0.2" else "127.0.0.2"
    await server.set({"api.test": [keep, "127.0.0.4"]})
    await wait_until(lambda: labels() == {f"{keep}:{port}", f"127.0.0.4:{port}"})
    newcomer = pool.by_label[f"127.0.0.4:{port}"]
    await wait_until(lambda: newcomer.checked_up)
    assert newcomer.transitions == {"unhealthy": 1, "healthy": 1}, "held back until its first passing check"
    assert set(await answered_by(host, lb_port, 20)) == {keep, "127.0.0.4"}
    response = await download.read_response(timeout=10)
    assert response.status == 200 and len(response.body) == 1 << 20, "in-flight work on a removed backend finishes"
    await download.close()

    # a new address where nothing listens: checked, found down, never given traffic
    await server.set({"api.test": [keep, "127.0.0.4", "127.0.0.5"]})
    await wait_until(lambda: f"127.0.0.5:{port}" in labels())
    dead = pool.by_label[f"127.0.0.5:{port}"]
    await wait_until(lambda: daemon.health.pools["web"].records[dead].checks_failed >= 1)
    assert set(await answered_by(host, lb_port, 20)) == {keep, "127.0.0.4"}
    assert dead.connections_total == 0 and dead.state.value == "unhealthy"

    # the name vanishes (NXDOMAIN): the last good set stays, and it is said and counted
    failures = daemon.discovery.pools["web"].failures_total
    await server.set({})
    await wait_until(lambda: daemon.discovery.pools["web"].failures_total >= failures + 2)
    assert labels() == {f"{keep}:{port}", f"127.0.0.4:{port}", f"127.0.0.5:{port}"}
    assert any("no A/AAAA records; keeping the last good set" in r.getMessage() for r in caplog.records)

    # the DNS server dies: lookups fail, the set stays, the metric counts
    server.stop()
    failures = daemon.discovery.pools["web"].failures_total
    await wait_until(lambda: daemon.discovery.pools["web"].failures_total >= failures + 2)
    assert set(await answered_by(host, lb_port, 10)) == {keep, "127.0.0.4"}
    assert daemon.admin is not None
    text = (await fetch(daemon.admin.address.host, daemon.admin.address.port, path="/metrics")).body.decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "lbproxy_discovery_failures"]
    assert family.samples[0].labels == {"pool": "web"} and family.samples[0].value >= failures + 2
    status = (await fetch(daemon.admin.address.host, daemon.admin.address.port, path="/status")).json()
    (entry,) = status["pools"][0]["discovery"]["dns"]
    assert entry["name"] == f"api.test:{port}" and entry["error"]
    assert entry["addresses"] == [keep, "127.0.0.4", "127.0.0.5"]


async def test_reload_keeps_discovered_backends(make_daemon, dnsmasq, loopback_backends) -> None:
    port = await loopback_backends(["127.0.0.2", "127.0.0.3"])
    server = await dnsmasq({"api.test": ["127.0.0.2", "127.0.0.3"]})
    text = pool_config(port, server.port)
    daemon = await make_daemon(text)
    before = list(daemon.pools["web"].backends)
    assert len(before) == 2
    import textwrap

    notes = await daemon.reload(load_config_text(textwrap.dedent(text).replace("retries", "retries"), "<new>"))
    assert notes == [] and daemon.pools["web"].backends == before, "same objects, same state"
    weighted = textwrap.dedent(text).replace(f"- dns: api.test:{port}", f"- {{dns: 'api.test:{port}', weight: 5}}")
    await daemon.reload(load_config_text(weighted, "<new>"))
    assert [b.base_weight for b in daemon.pools["web"].backends] == [5, 5]
    assert daemon.pools["web"].backends == before


async def test_discovery_with_workers_reaches_every_worker(tmp_path: Path, dnsmasq, loopback_backends) -> None:
    port = await loopback_backends(["127.0.0.2", "127.0.0.3"])
    server = await dnsmasq({"api.test": ["127.0.0.2"]})
    path = tmp_path / "lb.yaml"
    import textwrap

    path.write_text(textwrap.dedent(pool_config(port, server.port)))
    lb = await LbProcess.start(path, "--workers", "2")
    try:
        host, lb_port = lb.address()
        assert set(await answered_by(host, lb_port, 10)) == {"127.0.0.2"}
        await server.set({"api.test": ["127.0.0.3"]})
        async with asyncio.timeout(10):
            while True:
                status = await lb.status()
                backends = status["pools"][0]["backends"]
                if [b["address"] for b in backends] == [f"127.0.0.3:{port}"] and backends[0]["worker_states"] == [
                    "healthy",
                    "healthy",
                ]:
                    break
                await asyncio.sleep(0.05)
        assert set(await lb.requests_from_every_worker()) == {"127.0.0.3"}, "both workers use the new set"
        probes = [line for line in lb.lines if "discovery: pool web" in line]
        assert probes and not any("[worker" in line for line in probes), "only the supervisor looks names up"
    finally:
        assert await lb.stop() == 0


def test_dns_backend_config() -> None:
    text = """
pools:
  web:
    resolvers: 127.0.0.1:5353
    resolve_interval: 5s
    backends:
      - 10.0.0.1:80
      - {dns: API.Internal.:8080, weight: 3, max_connections: 10}
listeners: [{name: p, bind: '127.0.0.1:0', routes: [{pool: web}]}]
"""
    pool = load_config_text(text).pools["web"]
    assert pool.resolvers == (Address("127.0.0.1", 5353),) and pool.resolve_interval == 5
    (entry,) = pool.dns_backends
    assert (entry.name, entry.port, entry.weight, entry.max_connections) == ("api.internal", 8080, 3, 10)
    assert [str(b.address) for b in pool.backends] == ["10.0.0.1:80"]
    assert load_config_text(text.replace("resolvers: 127.0.0.1:5353", "resolvers: ['::1', 10.0.0.2]")).pools[
        "web"
    ].resolvers == (Address("::1", 53), Address("10.0.0.2", 53))
    only_dns = text.replace("      - 10.0.0.1:80\n", "")
    assert load_config_text(only_dns).pools["web"].backends == ()

    def problems(replace: str, by: str) -> list[str]:
        with pytest.raises(ConfigError) as info:
            load_config_text(text.replace(replace, by), "lb.yaml")
        return info.value.problems

    assert problems("API.Internal.:8080", "10.0.0.9:8080") == [
        "lb.yaml:8: pools.web.backends[1].dns: '10.0.0.9:8080' is an IP address: use 'address' for it "
        "('dns' takes a name to look up)"
    ]
    assert problems("dns: API.Internal.:8080", "dns: api.internal") == [
        "lb.yaml:8: pools.web.backends[1].dns: malformed address 'api.internal': expected host:port or [ipv6]:port"
    ]
    assert problems("{dns:", "{address: 10.0.0.3:1, dns:") == [
        "lb.yaml:8: pools.web.backends[1].dns: give either 'address' or 'dns', not both"
    ]
    assert problems("resolvers: 127.0.0.1:5353", "resolvers: [dns.google]") == [
        "lb.yaml:4: pools.web.resolvers: invalid resolver 'dns.google': expected an IP address with an optional "
        "port, e.g. '10.0.0.2' or '127.0.0.1:5353'"
    ]
    assert problems("resolve_interval: 5s", "resolve_interval: 0") == [
        "lb.yaml:5: pools.web.resolve_interval: must be greater than 0, got integer 0"
    ]
    assert problems("      - 10.0.0.1:80\n", "      - {dns: 'api.internal:8080'}\n") == [
        "lb.yaml:8: pools.web.backends[1]: duplicate backend dns api.internal:8080 (first at line 7)"
    ]


def test_discovered_backends_are_deduplicated_and_stable() -> None:
    text = """
pools:
  web:
    backends: [10.0.0.1:80, {dns: 'a.test:80', weight: 2}, {dns: 'b.test:80'}]
listeners: [{name: p, bind: '127.0.0.1:0', routes: [{pool: web}]}]
"""
    pool = load_config_text(text).pools["web"]
    found = discovered_backends(pool, {("a.test", 80): ("10.0.0.3", "10.0.0.1", "10.0.0.2"), ("b.test", 80): ("10.0.0.2", "fd00::1")})
    assert [str(b.address) for b in found] == ["10.0.0.3:80", "10.0.0.2:80", "[fd00::1]:80"]
    assert [b.weight for b in found] == [2, 2, 1]
    assert from_wire(json.loads(json.dumps(to_wire(found)))) == found
    effective = effective_pool_config(pool, found)
    assert [str(b.address) for b in effective.backends] == ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.2:80", "[fd00::1]:80"]
    assert effective_pool_config(pool, ()) is pool
    assert isinstance(found[0], BackendConfig)

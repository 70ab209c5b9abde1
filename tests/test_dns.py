"""The dns listener: health-aware answers, rotation, NXDOMAIN/REFUSED, truncation, fuzzing, dig."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections import Counter

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbproxy.config.loader import load_config_text
from lbproxy.dns.responder import DnsResponder
from lbproxy.pool.pool import Pool


def dns_config(backends: list[str], extra: str = "") -> str:
    items = ", ".join(f'"{b}"' for b in backends)
    return f"""
    pools:
      web:
        backends: [{items}]
        {extra}
      v6:
        backends: ["[::1]:80", "[::2]:80"]
    listeners:
      - name: dns
        bind: 127.0.0.1:0
        mode: dns
        zone: svc.test
        ttl: 3
        max_answers: 3
        records: {{web: web, "@": web, v6: v6}}
    """


def query(host: str, port: int, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=3)
    return dns.query.udp(q, host, port=port, timeout=3)


async def ask(host: str, port: int, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    return await asyncio.to_thread(query, host, port, name, rdtype, tcp)


def addresses(message: dns.message.Message) -> list[str]:
    return [r.address for rrset in message.answer for r in rrset]


async def test_answers_rotate_and_skip_down_backends(make_daemon) -> None:
    backends = [f"127.0.0.{i}:80" for i in range(1, 6)]
    daemon = await make_daemon(dns_config(backends))
    host, port = daemon.listener_address("dns")
    first = Counter()
    for _ in range(10):
        answer = await ask(host, port, "web.svc.test")
        assert answer.rcode() == dns.rcode.NOERROR and answer.flags & dns.flags.AA
        got = addresses(answer)
        assert len(got) == 3, "max_answers"
        assert answer.answer[0].ttl == 3
        first[got[0]] += 1
    assert len(first) == 5 and set(first.values()) == {2}, "the first address rotates over all backends"
    down = daemon.pools["web"].backends[1]
    down.set_checked_up(False, "test")
    for _ in range(10):
        got = addresses(await ask(host, port, "web.svc.test"))
        assert "127.0.0.2" not in got, "a backend known to be down is never handed out"
    for backend in daemon.pools["web"].backends:
        backend.set_checked_up(False, "test")
    answer = await ask(host, port, "web.svc.test")
    assert answer.rcode() == dns.rcode.NOERROR and not answer.answer and answer.authority, "NODATA with SOA"


async def test_zone_rules_over_udp_and_tcp(make_daemon) -> None:
    daemon = await make_daemon(dns_config(["127.0.0.1:80"]))
    host, port = daemon.listener_address("dns")
    assert (await ask(host, port, "nope.svc.test")).rcode() == dns.rcode.NXDOMAIN
    assert (await ask(host, port, "example.com")).rcode() == dns.rcode.REFUSED
    soa = await ask(host, port, "svc.test", "SOA")
    assert soa.answer and soa.answer[0].rdtype == dns.rdatatype.SOA
    ns = await ask(host, port, "svc.test", "NS", tcp=True)
    assert str(ns.answer[0][0].target) == "ns1.svc.test."
    glue = await ask(host, port, "ns1.svc.test")
    assert addresses(glue) == [host]
    assert addresses(await ask(host, port, "v6.svc.test", "AAAA", tcp=True)) in (["::1", "::2"], ["::2", "::1"])
    assert addresses(await ask(host, port, "web.svc.test", "A", tcp=True)) == ["127.0.0.1"]


async def test_truncation_over_udp_and_full_answer_over_tcp(make_daemon) -> None:
    backends = [f"127.0.{i // 250}.{i % 250 + 1}:80" for i in range(60)]
    text = dns_config(backends).replace("max_answers: 3", "max_answers: 60")
    daemon = await make_daemon(text)
    host, port = daemon.listener_address("dns")
    q = dns.message.make_query("web.svc.test", "A")
    q.use_edns(False)
    udp = await asyncio.to_thread(dns.query.udp, q, host, port=port, timeout=3, ignore_trailing=True)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = await ask(host, port, "web.svc.test", tcp=True)
    assert len(addresses(tcp)) == 60


async def test_resolver_with_retry_over_tcp_and_dig(make_daemon) -> None:
    daemon = await make_daemon(dns_config(["127.0.0.7:80"]))
    host, port = daemon.listener_address("dns")
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    answer = await asyncio.to_thread(resolver.resolve, "web.svc.test", "A")
    assert [r.address for r in answer] == ["127.0.0.7"]
    dig = shutil.which("dig")
    if dig is None:
        pytest.fail("dig is required (dnsutils, installed by .ci/run)")
    proc = await asyncio.create_subprocess_exec(
        dig, f"@{host}", "-p", str(port), "+short", "+tries=1", "+time=2", "web.svc.test", "A",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert out.decode().split() == ["127.0.0.7"]


async def test_backend_failing_checks_leaves_answers_within_a_cycle(make_daemon) -> None:
    from tests.restartable import RestartableBackend

    live = [RestartableBackend("a", "127.0.0.2"), RestartableBackend("b", "127.0.0.3")]
    for backend in live:
        await backend.start()
    try:
        interval = 0.2
        text = dns_config([b.address for b in live], extra=f"health_check: {{interval: {interval}, timeout: 0.2}}")
        daemon = await make_daemon(text)
        host, port = daemon.listener_address("dns")
        assert sorted(addresses(await ask(host, port, "web.svc.test"))) == ["127.0.0.2", "127.0.0.3"]
        await live[0].stop()
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(5):
            while "127.0.0.2" in addresses(await ask(host, port, "web.svc.test")):
                await asyncio.sleep(0.02)
        took = loop.time() - started
        check = daemon.config.pools["web"].health_check
        assert check is not None
        assert took <= check.unhealthy_threshold * interval * 1.15 + 0.2 + 0.3, took
        await live[0].start()
        async with asyncio.timeout(5):
            while "127.0.0.2" not in addresses(await ask(host, port, "web.svc.test")):
                await asyncio.sleep(0.02)
    finally:
        for backend in live:
            await backend.stop()


async def test_malformed_packets_never_crash_the_listener(make_daemon) -> None:
    daemon = await make_daemon(dns_config(["127.0.0.1:80"]))
    host, port = daemon.listener_address("dns")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1)
    try:
        sock.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff", (host, port))
        data, _ = await asyncio.to_thread(sock.recvfrom, 4096)
        assert data[:2] == b"\x12\x34" and data[3] & 0x0F == dns.rcode.FORMERR
        sock.sendto(b"\x01", (host, port))
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(sock.recvfrom, 4096)  # too short to answer: dropped
    finally:
        sock.close()
    assert addresses(await ask(host, port, "web.svc.test")) == ["127.0.0.1"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_responder_fuzz(data: bytes) -> None:
    config = load_config_text(dns_config(["127.0.0.1:80", "127.0.0.2:80"]))
    pools = {name: Pool(pc) for name, pc in config.pools.items()}
    responder = DnsResponder(config.listeners[0].dns, pools, "127.0.0.1")  # type: ignore[arg-type]
    answer = responder.respond(data, 512)
    if answer is not None:
        assert len(answer) >= 12 and answer[2] & 0x80, "always a response, never a query"
        message = dns.message.from_wire(answer) if answer[3] & 0x0F != dns.rcode.FORMERR else None
        assert message is None or message.id == int.from_bytes(data[:2], "big")

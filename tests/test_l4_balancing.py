"""Balancing through a real tcp listener: least_connections, ip_hash, random, user strategies, limits.

Backends are the demo TCP echo servers, which greet with ``hello from tN``: the greeting says where
a connection went. Distinct client addresses are distinct loopback sources (127.0.0.X).
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections import Counter

import pytest

from lbproxy.demo.backends import start_tcp_backend
from tests.l4_support import close_writer, closed_without_data, eventually, greeting, open_from, tcp_yaml

SOURCES = [f"127.0.0.{i}" for i in range(2, 26)]


async def hold(host: str, port: int, count: int, source: str = "127.0.0.1") -> list[tuple[str, asyncio.StreamWriter]]:
    """Open ``count`` long-lived connections; returns (backend name, writer) for each."""
    held = []
    for _ in range(count):
        reader, writer = await open_from(host, port, source)
        async with asyncio.timeout(5):
            name = (await reader.readline()).decode().strip().removeprefix("hello from ")
        held.append((name, writer))
    return held


async def test_least_connections_spreads_long_lived_connections_by_weight(make_daemon, tcp_backends) -> None:
    ports = await tcp_backends(3)
    text = tcp_yaml(ports, strategy="least_connections").replace(
        f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[0]}\n        weight: 2"
    )
    daemon = await make_daemon(text)
    host, port = daemon.listener_address("raw")
    held = await hold(host, port, 8)
    try:
        # active/weight stays level: t1 (weight 2) holds twice as many as the others.
        assert Counter(name for name, _ in held) == {"t1": 4, "t2": 2, "t3": 2}
        # Free t2's connections: the next two go to t2 (round robin would go t1 then t2).
        for name, writer in held:
            if name == "t2":
                await close_writer(writer)
        backends = daemon.pools["echo"].backends
        await eventually(lambda: backends[1].active == 0, what="t2's connections to close")
        more = await hold(host, port, 2)
        held += more
        assert [name for name, _ in more] == ["t2", "t2"]
    finally:
        for _, writer in held:
            await close_writer(writer)


async def test_random_two_choices_spreads_long_lived_connections(make_daemon, tcp_backends) -> None:
    """With two draws, a backend holding more connections than another loses every comparison."""
    ports = await tcp_backends(3)
    daemon = await make_daemon(tcp_yaml(ports, strategy="random"))
    host, port = daemon.listener_address("raw")
    held = await hold(host, port, 30)
    try:
        counts = Counter(name for name, _ in held)
        assert set(counts) == {"t1", "t2", "t3"}
        assert max(counts.values()) - min(counts.values()) <= 4, counts
    finally:
        for _, writer in held:
            await close_writer(writer)


HEALTH_CHECK = """
health_check:
  type: tcp
  interval: 50ms
  timeout: 500ms
  healthy_threshold: 1
  unhealthy_threshold: 1
"""


@pytest.mark.parametrize(
    "pool_extra",
    [HEALTH_CHECK, "outlier_detection: false"],
    ids=["health_check", "connect_failover_only"],
)
async def test_ip_hash_keeps_clients_and_brings_them_back(make_daemon, pool_extra: str) -> None:
    """Each source sticks to one backend; stopping one moves only its clients; they return.

    With a health check the stopped backend is marked down and back up; without one (and without
    passive ejection) every connect to it fails over along the ring, and succeeds again once it
    is back.
    """
    servers = [await start_tcp_backend(f"t{i}") for i in (1, 2, 3)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    try:
        daemon = await make_daemon(tcp_yaml(ports, strategy="ip_hash", pool=pool_extra))
        host, port = daemon.listener_address("raw")
        t2 = daemon.pools["echo"].backends[1]
        checked = "health_check" in pool_extra

        async def mapping() -> dict[str, str]:
            return {src: await greeting(host, port, src) for src in SOURCES}

        first = await mapping()
        assert first == await mapping(), "a client moved while nothing changed"
        assert set(first.values()) == {"t1", "t2", "t3"}, first

        servers[1].close()
        await servers[1].wait_closed()
        if checked:
            await eventually(lambda: not t2.available, what="t2 to be marked down")
        during = await mapping()
        for src, name in first.items():
            if name == "t2":
                assert during[src] in ("t1", "t3")
            else:
                assert during[src] == name, f"{src} moved off {name} though {name} stayed up"
        assert during == await mapping(), "failed-over clients must stay on their new backend"

        servers[1] = await start_tcp_backend("t2", port=ports[1])
        if checked:
            await eventually(lambda: t2.available, what="t2 to be marked up")
        assert await mapping() == first, "clients did not come back to t2"
    finally:
        for server in servers:
            server.close()


async def test_two_instances_with_the_same_backends_agree(make_daemon, tcp_backends) -> None:
    ports = await tcp_backends(4)
    one = await make_daemon(tcp_yaml(ports, strategy="ip_hash"))
    other = await make_daemon(tcp_yaml(list(reversed(ports)), strategy="ip_hash"))
    host1, port1 = one.listener_address("raw")
    host2, port2 = other.listener_address("raw")
    first = [await greeting(host1, port1, src) for src in SOURCES]
    second = [await greeting(host2, port2, src) for src in SOURCES]
    assert first == second
    assert len(set(first)) >= 3


async def test_user_strategy_module_on_sys_path(make_daemon, tcp_backends, tmp_path, monkeypatch) -> None:
    """A strategy class from the user's own module, named ``module:Class`` in the YAML."""
    package = tmp_path / "userlb_l4test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "balancing.py").write_text(
        textwrap.dedent(
            '''
            from __future__ import annotations

            class LastOctet:
                """Backend index = last octet of the client address modulo the backend count."""

                def __init__(self, backends):
                    self.backends = list(backends)
                    self.keys = []

                def update(self, backends):
                    self.backends = list(backends)

                def pick(self, key, exclude=()):
                    self.keys.append(key)
                    eligible = [b for b in self.backends if b.available and b not in exclude]
                    if not eligible:
                        return None
                    return eligible[int(key.rsplit(".", 1)[1]) % len(eligible)]
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        ports = await tcp_backends(3)
        daemon = await make_daemon(tcp_yaml(ports, strategy="userlb_l4test.balancing:LastOctet"))
        host, port = daemon.listener_address("raw")
        got = {src: await greeting(host, port, src) for src in ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")}
        assert got == {"127.0.0.3": "t1", "127.0.0.4": "t2", "127.0.0.5": "t3", "127.0.0.6": "t1"}
        strategy = daemon.pools["echo"].strategy
        assert type(strategy).__name__ == "LastOctet"
        assert strategy.keys == ["127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6"]  # type: ignore[attr-defined]
    finally:
        for name in [m for m in sys.modules if m.startswith("userlb_l4test")]:
            del sys.modules[name]


async def test_backend_max_connections_is_skipped_when_full(make_daemon, tcp_backends) -> None:
    ports = await tcp_backends(2)
    text = tcp_yaml(ports).replace(f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[0]}\n        max_connections: 1")
    text = text.replace(f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[1]}\n        max_connections: 2")
    daemon = await make_daemon(text)
    host, port = daemon.listener_address("raw")
    held = await hold(host, port, 3)
    try:
        assert Counter(name for name, _ in held) == {"t1": 1, "t2": 2}
        # Every backend full: the next client is closed at once, without a byte.
        reader, writer = await open_from(host, port)
        assert await closed_without_data(reader)
        await close_writer(writer)
        assert daemon.pools["echo"].no_backend_total >= 1
        # One frees up: new connections go there again.
        await close_writer(held.pop(0)[1])
        await eventually(lambda: sum(b.active for b in daemon.pools["echo"].backends) == 2, what="release")
        held += await hold(host, port, 1)
    finally:
        for _, writer in held:
            await close_writer(writer)

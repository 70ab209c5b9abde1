"""Shared fixtures: the daemon on port 0, real backend servers, and small real clients.

Every fixture is a factory that cleans up what it made; every await in a test is bounded.
In-process tests run on asyncio's loop; the lbproxy processes that tests start run on uvloop.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest

from lbproxy.build import build_name, compiled_modules, stale_modules
from lbproxy.config.loader import load_config_text
from lbproxy.demo.backends import server_port, start_http_backend, start_tcp_backend
from lbproxy.runtime.daemon import Daemon
from tests.restartable import RestartableBackend

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "interpreted: patches or traces a data-path module (lbproxy.build.COMPILED_MODULES); a "
        "compiled build allows neither, so these run in the pure-Python suite only",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_modules()
    if stale:
        pytest.exit(f"compiled modules older than their source: {', '.join(stale)}; rebuild them or delete the .so files", 3)


def pytest_report_header(config: pytest.Config) -> str:
    compiled = compiled_modules()
    return f"lbproxy build: {build_name()}" + (f" ({', '.join(compiled)} compiled)" if compiled else "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not compiled_modules():
        return
    skip = pytest.mark.skip(reason="patches or traces a compiled data-path module; the pure-Python suite runs it")
    for item in items:
        if "interpreted" in item.keywords:
            item.add_marker(skip)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """In-process tests run on asyncio's own loop; ``lbproxy run`` processes (test_cli, test_workers,
    test_reload...) run on uvloop as in production. uvloop's ``loop.close()`` can block a whole
    test session on a handle left by a failed test, where asyncio's reports it and moves on."""
    return {"asyncio": asyncio.new_event_loop}


DaemonFactory = Callable[[str], Awaitable[Daemon]]


@pytest.fixture
async def make_daemon() -> AsyncIterator[DaemonFactory]:
    """``await make_daemon(yaml_text)``: a started Daemon; shut down at the end of the test."""
    daemons: list[Daemon] = []

    async def factory(text: str) -> Daemon:
        config = load_config_text(textwrap.dedent(text), "<test>")
        daemon = Daemon(config)
        await daemon.start()
        daemons.append(daemon)
        return daemon

    yield factory
    for daemon in daemons:
        async with asyncio.timeout(15):
            await daemon.shutdown()


@pytest.fixture
async def http_backends() -> AsyncIterator[Callable[..., Awaitable[list[int]]]]:
    """``await http_backends(n)``: ports of n echo HTTP backends named b1..bn."""
    servers: list[asyncio.AbstractServer] = []

    async def factory(count: int, prefix: str = "b") -> list[int]:
        ports = []
        for i in range(1, count + 1):
            server = await start_http_backend(f"{prefix}{i}")
            servers.append(server)
            ports.append(server_port(server))
        return ports

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
async def tcp_backends() -> AsyncIterator[Callable[..., Awaitable[list[int]]]]:
    """``await tcp_backends(n)``: ports of n TCP echo backends (greeting 'hello from tN')."""
    servers: list[asyncio.AbstractServer] = []

    async def factory(count: int, greet: bool = True) -> list[int]:
        ports = []
        for i in range(1, count + 1):
            server = await start_tcp_backend(f"t{i}", greet=greet)
            servers.append(server)
            ports.append(server_port(server))
        return ports

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[asyncio.AbstractServer]]]:
    """``await servers(protocol_factory)``: any custom server on 127.0.0.1:0, closed at the end."""
    made: list[asyncio.AbstractServer] = []
    protocols: list[asyncio.Protocol] = []

    def tracking(protocol_factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            protocol = protocol_factory()
            protocols.append(protocol)
            return protocol

        return make

    async def factory(protocol_factory: Callable[[], asyncio.Protocol], host: str = "127.0.0.1") -> asyncio.AbstractServer:
        server = await asyncio.get_running_loop().create_server(tracking(protocol_factory), host, 0)
        made.append(server)
        return server

    yield factory
    for server in made:
        server.close()
    for protocol in protocols:
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.abort()
    await asyncio.sleep(0)


@pytest.fixture
async def restartable() -> AsyncIterator[Callable[[int], Awaitable[list[RestartableBackend]]]]:
    """``await restartable(n)``: n started RestartableBackends (b1..bn), stopped at the end."""
    made: list[RestartableBackend] = []

    async def factory(count: int) -> list[RestartableBackend]:
        backends = [RestartableBackend(f"b{i}") for i in range(1, count + 1)]
        for backend in backends:
            await backend.start()
        made.extend(backends)
        return backends

    yield factory
    for backend in made:
        await backend.stop()


def unused_port() -> int:
    """A loopback port with nothing listening (bound then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))

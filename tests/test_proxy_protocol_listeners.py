"""PROXY protocol on real listeners: accepted on tcp and http listeners from trusted sources only,
refused when malformed, late or untrusted; sent to backends by tcp pools (pool or backend level).

The address a header carries must be the client address everywhere: balancing (ip_hash),
X-Forwarded-For, and the header lbproxy sends on.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from lbproxy.net.proxy_protocol import ProxyInfo, build_v1, build_v2, parse
from tests.client import Connection
from tests.l4_support import (
    close_writer,
    closed_without_data,
    eventually,
    greeting,
    open_from,
    recording_backend,  # noqa: F401 (fixture)
    tcp_yaml,
)

CLIENT = ("203.0.113.7", 40123)
LISTENER = ("198.51.100.9", 443)
BUILDERS = {"v1": build_v1, "v2": build_v2}

# -- tcp listeners ------------------------------------------------------------------------------


@pytest.mark.parametrize("received", ["v1", "v2"])
@pytest.mark.parametrize("sent", ["v1", "v2"])
async def test_tcp_listener_passes_the_header_address_on(make_daemon, recording_backend, received, sent) -> None:
    """Accept v1/v2, strip it, and send the backend a header naming the original client."""
    port_b, seen = await recording_backend()
    daemon = await make_daemon(
        tcp_yaml([port_b], pool=f"proxy_protocol: {sent}", listener="accept_proxy_protocol: true")
    )
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    writer.write(BUILDERS[received](CLIENT, LISTENER) + b"payload")  # header and data together
    expected = BUILDERS[sent](CLIENT, LISTENER) + b"payload"
    await eventually(lambda: bool(seen) and bytes(seen[0].data) == expected, what="the backend's bytes")
    writer.write(b" more")
    await eventually(lambda: bytes(seen[0].data) == expected + b" more", what="later bytes")
    assert bytes(seen[0].data) == expected + b" more"
    await close_writer(writer)


async def test_tcp_listener_header_split_into_single_bytes(make_daemon, recording_backend) -> None:
    port_b, seen = await recording_backend()
    daemon = await make_daemon(
        tcp_yaml([port_b], pool="proxy_protocol: v1", listener="accept_proxy_protocol: true")
    )
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    for byte in build_v2(CLIENT, LISTENER):
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0)
    writer.write(b"x")
    expected = build_v1(CLIENT, LISTENER) + b"x"
    await eventually(lambda: bool(seen) and bytes(seen[0].data) == expected, what="the backend's bytes")
    assert bytes(seen[0].data) == expected
    await close_writer(writer)


async def test_tcp_listener_balances_on_the_header_address(make_daemon, tcp_backends) -> None:
    """ip_hash keyed on a PROXY address maps exactly like a direct connection from that address."""
    ports = await tcp_backends(3)
    text = tcp_yaml(ports, strategy="ip_hash") + (
        "  - name: behind\n    bind: 127.0.0.1:0\n    mode: tcp\n    pool: echo\n"
        "    accept_proxy_protocol: true\n"
    )
    daemon = await make_daemon(text)
    direct = daemon.listener_address("raw")
    behind = daemon.listener_address("behind")
    sources = [f"127.0.0.{i}" for i in range(2, 22)]
    straight = [await greeting(*direct, source=src) for src in sources]
    proxied = [
        await greeting(*behind, header=build_v2((src, 5555), ("127.0.0.1", behind[1]))) for src in sources
    ]
    assert proxied == straight
    assert len(set(straight)) == 3


async def test_tcp_listener_local_command_keeps_the_socket_address(make_daemon, recording_backend) -> None:
    port_b, seen = await recording_backend()
    daemon = await make_daemon(
        tcp_yaml([port_b], pool="proxy_protocol: v2", listener="accept_proxy_protocol: true")
    )
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port, "127.0.0.9")
    local_port = writer.get_extra_info("sockname")[1]
    writer.write(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00hello")
    await eventually(lambda: bool(seen) and bytes(seen[0].data).endswith(b"hello"), what="the backend's bytes")
    info, _ = parse(bytes(seen[0].data))  # type: ignore[misc]
    assert info == ProxyInfo(("127.0.0.9", local_port), (host, port))
    await close_writer(writer)


@pytest.mark.parametrize(
    "first_bytes",
    [
        b"hello, no header here\r\n",
        b"PROXY TCP4 203.0.113.7 198.51.100.9 40123\r\n",
        b"PROXY TCP4 203.0.113.7 198.51.100.9 40123 443 \r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c" + b"\x00" * 12,
    ],
    ids=["no-header", "v1-missing-field", "v1-trailing-space", "v2-bad-command"],
)
async def test_tcp_listener_malformed_header_closes(make_daemon, recording_backend, first_bytes) -> None:
    port_b, seen = await recording_backend()
    daemon = await make_daemon(tcp_yaml([port_b], listener="accept_proxy_protocol: true"))
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    writer.write(first_bytes)
    assert await closed_without_data(reader, timeout=2)
    await close_writer(writer)
    assert seen == [], "no backend connection may be opened for a bad header"
    assert daemon.pools["echo"].backends[0].connections_total == 0


async def test_tcp_listener_refuses_untrusted_senders(make_daemon, recording_backend) -> None:
    port_b, seen = await recording_backend()
    daemon = await make_daemon(
        tcp_yaml(
            [port_b],
            pool="proxy_protocol: v1",
            listener="accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.2/32]",
        )
    )
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port, "127.0.0.3")
    writer.write(build_v1(CLIENT, LISTENER) + b"x")
    assert await closed_without_data(reader, timeout=2)
    await close_writer(writer)
    assert seen == []
    reader, writer = await open_from(host, port, "127.0.0.2")
    writer.write(build_v1(CLIENT, LISTENER) + b"x")
    await eventually(lambda: bool(seen) and bytes(seen[0].data) == build_v1(CLIENT, LISTENER) + b"x", what="data")
    await close_writer(writer)


async def test_tcp_listener_header_deadline_is_not_extended_by_trickling(make_daemon, recording_backend) -> None:
    port_b, seen = await recording_backend()
    daemon = await make_daemon(
        tcp_yaml([port_b], listener="accept_proxy_protocol: true\nidle_timeout: 300ms")
    )
    host, port = daemon.listener_address("raw")
    silent_reader, silent_writer = await open_from(host, port)
    reader, writer = await open_from(host, port)
    started = time.monotonic()
    header = build_v1(CLIENT, LISTENER)
    closed = False
    for i in range(15):  # one byte every 100 ms would take 4.7 s for the whole header
        try:
            writer.write(header[i : i + 1])
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        await asyncio.sleep(0.1)
        if reader.at_eof() or writer.is_closing():
            closed = True
            break
    assert closed or await closed_without_data(reader, timeout=0.1)
    assert time.monotonic() - started < 1.2
    assert await closed_without_data(silent_reader, timeout=1)
    assert seen == []
    await close_writer(writer)
    await close_writer(silent_writer)


# -- sending to backends ------------------------------------------------------------------------


async def test_tcp_pool_sends_headers_per_backend(make_daemon, recording_backend) -> None:
    """``proxy_protocol`` on the pool applies to every backend; a backend's own setting wins."""
    port_1, seen_1 = await recording_backend()
    port_2, seen_2 = await recording_backend()
    text = tcp_yaml([port_1, port_2], pool="proxy_protocol: v1").replace(
        f"127.0.0.1:{port_2}", f"127.0.0.1:{port_2}\n        proxy_protocol: v2"
    )
    daemon = await make_daemon(text)
    host, port = daemon.listener_address("raw")
    writers = []
    for _ in range(2):
        reader, writer = await open_from(host, port, "127.0.0.5")
        writer.write(b"data")
        writers.append(writer)
    await eventually(lambda: bool(seen_1 and seen_2) and seen_1[0].data.endswith(b"data") and seen_2[0].data.endswith(b"data"), what="both backends")
    for seen, version, writer in ((seen_1, b"PROXY TCP4 ", writers[0]), (seen_2, b"\r\n\r\n\x00", writers[1])):
        data = bytes(seen[0].data)
        assert data.startswith(version)
        info, consumed = parse(data)  # type: ignore[misc]
        assert data[consumed:] == b"data"
        assert info.source == writer.get_extra_info("sockname")[:2]
        assert info.destination == (host, port)
    for writer in writers:
        await close_writer(writer)


# -- http listeners -----------------------------------------------------------------------------


def http_yaml(web_port: int, listener: str = "", pool: str = "") -> str:
    extra = "".join(f"\n    {line}" for line in listener.splitlines() if line.strip())
    pool_extra = "".join(f"\n    {line}" for line in pool.splitlines() if line.strip())
    return (
        f"pools:\n  web:{pool_extra}\n    backends: ['127.0.0.1:{web_port}']\n"
        f"listeners:\n  - name: web\n    bind: 127.0.0.1:0\n    mode: http\n"
        f"    routes: [{{pool: web}}]{extra}\n"
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_http_listener_uses_the_header_address_for_x_forwarded_for(make_daemon, http_backends, version) -> None:
    (web,) = await http_backends(1)
    daemon = await make_daemon(http_yaml(web, "accept_proxy_protocol: true"))
    host, port = daemon.listener_address("web")
    conn = await Connection.open(host, port)
    try:
        await conn.send(BUILDERS[version](CLIENT, LISTENER))
        for _ in range(2):  # the address holds for every request on the connection
            response = await conn.request("GET", "/who")
            assert response.status == 200
            headers = dict((k.lower(), v) for k, v in response.json()["headers"])
            assert headers["x-forwarded-for"] == CLIENT[0]
    finally:
        await conn.close()


async def test_http_listener_balances_on_the_header_address(make_daemon, http_backends) -> None:
    ports = await http_backends(3)
    backends = "".join(f"\n      - 127.0.0.1:{p}" for p in ports)
    daemon = await make_daemon(
        f"pools:\n  web:\n    strategy: ip_hash\n    backends:{backends}\n"
        "listeners:\n"
        "  - {name: direct, bind: 127.0.0.1:0, mode: http, routes: [{pool: web}]}\n"
        "  - {name: behind, bind: 127.0.0.1:0, mode: http, routes: [{pool: web}], accept_proxy_protocol: true}\n"
    )
    direct = daemon.listener_address("direct")
    behind = daemon.listener_address("behind")

    async def backend_of(address: tuple[str, int], source: str, header: bytes = b"") -> str:
        reader, writer = await open_from(*address, source)
        conn = Connection(reader, writer)
        try:
            if header:
                await conn.send(header)
            return (await conn.request("GET", "/")).json()["backend"]
        finally:
            await conn.close()

    sources = [f"127.0.0.{i}" for i in range(2, 22)]
    straight = [await backend_of(direct, src) for src in sources]
    proxied = [await backend_of(behind, "127.0.0.1", build_v1((src, 1), ("127.0.0.1", 2))) for src in sources]
    assert proxied == straight
    assert len(set(straight)) == 3


@pytest.mark.parametrize(
    ("source", "first_bytes"),
    [
        ("127.0.0.3", build_v2(CLIENT, LISTENER) + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("127.0.0.2", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("127.0.0.2", b"PROXY TCP4 203.0.113.7 198.51.100.9 40123 99999\r\nGET / HTTP/1.1\r\n\r\n"),
    ],
    ids=["untrusted-sender", "no-header", "malformed-header"],
)
async def test_http_listener_refuses_bad_or_untrusted_headers(make_daemon, http_backends, source, first_bytes) -> None:
    (web,) = await http_backends(1)
    daemon = await make_daemon(
        http_yaml(web, "accept_proxy_protocol: true\nproxy_protocol_from: [127.0.0.2/32]")
    )
    host, port = daemon.listener_address("web")
    reader, writer = await open_from(host, port, source)
    writer.write(first_bytes)
    assert await closed_without_data(reader, timeout=2), "no response may be sent"
    await close_writer(writer)
    assert daemon.pools["web"].backends[0].connections_total == 0


# -- logs ---------------------------------------------------------------------------------------


async def test_tcp_access_log_names_the_header_client(make_daemon, tcp_backends, tmp_path) -> None:
    """One JSON line per tcp connection: the PROXY header's client, backend, bytes, termination."""
    import json

    (echo,) = await tcp_backends(1)
    path = tmp_path / "access.log"
    daemon = await make_daemon(
        f'access_log: {{format: json, path: "{path}"}}\n'
        + tcp_yaml([echo], listener="accept_proxy_protocol: true")
    )
    listener = daemon.listeners["raw"]
    assert listener.access_log is daemon.access_log  # type: ignore[attr-defined]
    host, port = daemon.listener_address("raw")
    reader, writer = await open_from(host, port)
    writer.write(build_v2(CLIENT, LISTENER) + b"ping\n")
    async with asyncio.timeout(5):
        assert await reader.readline() == b"hello from t1\n"
        assert await reader.readline() == b"ping\n"
    writer.write_eof()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    await close_writer(writer)
    reader, writer = await open_from(host, port)
    writer.write(b"not a header\r\n")
    assert await closed_without_data(reader)
    await close_writer(writer)
    await eventually(lambda: not listener.connections, what="both connections to end")
    await daemon.shutdown()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    good, bad = lines
    assert good["type"] == "tcp" and good["client"] == CLIENT[0] and good["listener"] == "raw"
    assert good["backend"] == f"127.0.0.1:{echo}" and good["pool"] == "echo"
    assert good["bytes_in"] == len(build_v2(CLIENT, LISTENER)) + 5
    assert good["bytes_out"] == len(b"hello from t1\nping\n")
    assert good["termination"] is None
    assert bad["client"] == "127.0.0.1" and bad["backend"] is None
    assert bad["termination"] == "proxy_header_invalid"

"""``accept_sockets``: a listener the daemon binds itself listens on several SO_REUSEPORT
sockets (libuv accepts one connection per ready socket per loop pass), serves connections
from each, closes them all when it stops, and still refuses an address someone listens on."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket

import pytest

from lbproxy.config.model import Address
from lbproxy.net.bind import bind_socket, bind_sockets
from tests.backends_misbehaving import proxy_config

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def listeners_on(port: int) -> dict[int, int]:
    """Each IPv4 socket listening on ``port`` (any process), from /proc/net/tcp: its inode ->
    the connections waiting in its accept queue (a LISTEN socket's rx_queue is its backlog)."""
    found = {}
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == LISTEN:
                found[int(fields[9])] = int(fields[4].split(":")[1], 16)
    return found


def accept_queues(port: int) -> list[int]:
    return list(listeners_on(port).values())


def listening_sockets(port: int) -> int:
    return len(listeners_on(port))


def socket_inodes(pid: int) -> set[int]:
    """The inodes of every socket process ``pid`` holds open (its /proc/PID/fd links)."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def reuse_port(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


async def get(address: tuple[str, int]) -> bytes:
    """One ``Connection: close`` request on a new connection; everything the proxy sent."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
        return await reader.read()
    finally:
        writer.close()


def test_a_group_shares_one_port_with_reuseport() -> None:
    group = bind_sockets(Address("127.0.0.1", 0), 4)
    try:
        ports = {sock.getsockname()[1] for sock in group}
        assert len(group) == 4 and len(ports) == 1 and all(reuse_port(sock) for sock in group)
        assert listening_sockets(ports.pop()) == 4
    finally:
        for sock in group:
            sock.close()
    (single,) = bind_sockets(Address("127.0.0.1", 0), 1)
    try:
        assert not reuse_port(single)  # one socket: nobody can join it
    finally:
        single.close()


@pytest.mark.parametrize("holder_reuses_port", [False, True])
def test_a_group_refuses_an_address_already_listened_on(holder_reuses_port: bool) -> None:
    holder = bind_socket(Address("127.0.0.1", 0), reuse_port=holder_reuses_port)
    port = holder.getsockname()[1]
    try:
        # Without the plain probe bind, a reuseport holder (another daemon's group) would be
        # joined silently and get half of our connections.
        with pytest.raises(OSError) as info:
            bind_sockets(Address("127.0.0.1", port), 4)
        assert info.value.errno == errno.EADDRINUSE
        assert listening_sockets(port) == 1  # nothing of the refused group is left open
    finally:
        holder.close()


async def test_the_daemon_listens_on_accept_sockets_sockets_and_serves_them_all(make_daemon, http_backends) -> None:  # type: ignore[no-untyped-def]
    ports = await http_backends(1)
    daemon = await make_daemon(proxy_config(ports, listener={"accept_sockets": 4}))
    address = daemon.listener_address("public")
    assert listening_sockets(address[1]) == 4
    async with asyncio.timeout(20):
        # New connections from 60 client ports: the kernel hashes them over the 4 sockets.
        answers = await asyncio.gather(*(get(address) for _ in range(60)))
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers), answers[:1]
    assert daemon.listeners["public"].stats.connections_total == 60
    daemon.listeners["public"].stop_accepting()
    assert listening_sockets(address[1]) == 0
    with pytest.raises(ConnectionRefusedError):
        await get(address)


async def test_accept_sockets_1_is_one_plain_socket(make_daemon, http_backends) -> None:  # type: ignore[no-untyped-def]
    ports = await http_backends(1)
    daemon = await make_daemon(proxy_config(ports, listener={"accept_sockets": 1}))
    address = daemon.listener_address("public")
    assert listening_sockets(address[1]) == 1
    async with asyncio.timeout(10):
        assert (await get(address)).startswith(b"HTTP/1.1 200 ")


async def test_the_default_is_four_for_tcp_listeners_too(make_daemon, tcp_backends) -> None:  # type: ignore[no-untyped-def]
    ports = await tcp_backends(1)
    config = {
        "pools": {"raw": {"backends": [f"127.0.0.1:{ports[0]}"]}},
        "listeners": [{"name": "l4", "bind": "127.0.0.1:0", "mode": "tcp", "pool": "raw"}],
    }
    daemon = await make_daemon(json.dumps(config))
    assert listening_sockets(daemon.listener_address("l4")[1]) == 4


async def test_the_kernel_spreads_new_connections_over_the_sockets(make_daemon, http_backends) -> None:  # type: ignore[no-untyped-def]
    ports = await http_backends(1)
    daemon = await make_daemon(proxy_config(ports, listener={"accept_sockets": 4}))
    address = daemon.listener_address("public")
    clients = []
    try:
        # The loop is held (no await): the 40 handshakes complete in the kernel and wait in
        # the accept queues, where /proc shows which socket each landed on.
        for _ in range(40):
            client = socket.create_connection(address, timeout=5)
            clients.append(client)
        queues = accept_queues(address[1])
        assert sum(queues) == 40 and sum(1 for q in queues if q) >= 2, queues
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
            client.setblocking(False)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(20):
            for client in clients:
                answer = b""
                while chunk := await loop.sock_recv(client, 65536):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert accept_queues(address[1]) == [0, 0, 0, 0]
    finally:
        for client in clients:
            client.close()


async def test_a_reload_keeps_the_sockets_and_says_a_new_count_needs_a_restart(make_daemon, http_backends, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ports = await http_backends(1)
    probe = bind_socket(Address("127.0.0.1", 0))
    port = probe.getsockname()[1]  # a fixed bind, kept by the reload (port 0 would be a new one)
    probe.close()
    fixed = {"bind": f"127.0.0.1:{port}"}
    daemon = await make_daemon(proxy_config(ports, listener={**fixed, "accept_sockets": 3}))
    address = daemon.listener_address("public")
    path = tmp_path / "lb.yaml"
    path.write_text(proxy_config(ports, listener={**fixed, "accept_sockets": 2, "backlog": 64}))
    applied, notes = await daemon.reload_from_file(str(path))
    assert applied, notes
    assert notes == [
        "listener public: backlog changed to 64: needs a restart (or a new bind)",
        "listener public: accept_sockets changed to 2: needs a restart (or a new bind)",
    ]
    assert listening_sockets(address[1]) == 3
    async with asyncio.timeout(10):
        assert (await get(address)).startswith(b"HTTP/1.1 200 ")

"""Listening sockets: created here, then handed to the event loop.

Creating the socket ourselves (instead of letting ``loop.create_server`` do it) lets tests bind
port 0 and read the real port, and lets a supervisor share sockets with worker processes.
"""

from __future__ import annotations

import socket

from lbproxy.config.model import Address


def bind_socket(address: Address, *, backlog: int = 1024, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening TCP socket bound to ``address``.

    Raises ``OSError`` when the address cannot be bound (in use, not local, permission).
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_sockets(
    address: Address, count: int, *, backlog: int = 1024, reuse_port: bool | None = None
) -> list[socket.socket]:
    """``count`` listening sockets on ``address`` sharing it with SO_REUSEPORT (the kernel
    spreads new connections over them); by default one plain socket when ``count`` is 1
    (``reuse_port=True`` makes even a single socket joinable: a supervisor that rebinds a
    worker's share later needs that).

    Every socket of such a group has SO_REUSEPORT, and Linux lets any other socket of the same
    user that sets it too join the group. So the address is first bound without it, then
    released: another daemon already listening there makes that fail ("address in use"), as
    with one socket, instead of sharing its connections; and port 0 becomes one free port,
    which the group then binds. Raises ``OSError`` as ``bind_socket`` does."""
    if reuse_port is None:
        reuse_port = count > 1
    if not reuse_port:
        if count != 1:
            raise ValueError("several sockets on one address need SO_REUSEPORT")
        return [bind_socket(address, backlog=backlog)]
    probe = bind_socket(address, backlog=1)
    port = bound_address(probe).port
    probe.close()
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            group.append(bind_socket(Address(address.host, port), backlog=backlog, reuse_port=True))
    except BaseException:
        for sock in group:
            sock.close()
        raise
    return group


def bound_address(sock: socket.socket) -> Address:
    """The address a listening socket is actually bound to (port 0 resolved)."""
    host, port = sock.getsockname()[:2]
    return Address(host, port)


def peer_host(transport_peer: object) -> str:
    """The host part of ``transport.get_extra_info('peername')``; '' when unknown (e.g. unix)."""
    if isinstance(transport_peer, tuple) and transport_peer:
        return str(transport_peer[0])
    return ""

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


def bound_address(sock: socket.socket) -> Address:
    """The address a listening socket is actually bound to (port 0 resolved)."""
    host, port = sock.getsockname()[:2]
    return Address(host, port)


def peer_host(transport_peer: object) -> str:
    """The host part of ``transport.get_extra_info('peername')``; '' when unknown (e.g. unix)."""
    if isinstance(transport_peer, tuple) and transport_peer:
        return str(transport_peer[0])
    return ""

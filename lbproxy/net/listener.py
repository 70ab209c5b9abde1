"""The part every listener shares: its socket, its live connections, draining, and counters.

A listener owns its listening socket and stops independently of the others (aiohttp's lesson).
Connections register themselves on ``connection_made`` and unregister on ``connection_lost``, so
shutdown and reload can ask each live connection to finish and wait, with a bound, until none is
left.
"""

from __future__ import annotations

import abc
import asyncio
import ipaddress
import logging
import socket
import weakref
import struct
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from lbproxy.config.model import Address, ListenerConfig
from lbproxy.net.bind import bind_sockets, bound_address
from lbproxy.ratelimit import ClientConnections
from lbproxy.tls.contexts import ServerTls

log = logging.getLogger("lbproxy.listener")


class Drainable(Protocol):
    """A live connection as the listener sees it."""

    def begin_shutdown(self) -> None:
        """Finish the work in flight, take no new work, then close."""

    def abort(self) -> None:
        """Close now (drain timeout expired)."""


class WatchedProtocol(Protocol):
    """The protocol of a connection on a TLS listener: it holds the token of its handshake."""

    handshake_token: HandshakeToken | None


class HandshakeToken:
    """Lives exactly as long as the protocol that holds it (``handshake_token``).

    A TLS handshake that fails never reaches the protocol's ``connection_made``: the loop drops
    the protocol, the token goes with it, and the token's finalizer counts the failure.
    """

    __slots__ = ("__weakref__",)


class ListenerStats:
    """Plain counters read by the metrics collector at scrape time (no cost per increment)."""

    __slots__ = ("connections_total", "rejected_total", "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.connections_total = 0
        self.rejected_total = 0
        self.bytes_in = 0
        self.bytes_out = 0


class NetworkSet:
    """A set of CIDR networks with a fast ``contains(host)`` check."""

    __slots__ = ("networks", "_cache")

    def __init__(self, cidrs: tuple[str, ...]) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, host: str) -> bool:
        """True when ``host`` (an IP literal) is in one of the networks; False for non-IPs."""
        hit = self._cache.get(host)
        if hit is None:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                hit = False
            else:
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                hit = any(ip in net for net in self.networks)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[host] = hit
        return hit


class BaseListener(abc.ABC):
    """Its listening sockets plus its live connections. Subclasses supply ``protocol_factory``.

    ``sockets``: listening sockets bound elsewhere, all on the listener's address (a worker's
    share from the supervisor, a test's); the listener serves them as they are and binds none.
    """

    def __init__(self, config: ListenerConfig, *, sockets: Sequence[socket.socket] = ()) -> None:
        self.config = config
        self.name = config.name
        self.stats = ListenerStats()
        self.connections: set[Drainable] = set()
        self.accepting = True
        self.proxy_protocol_from = NetworkSet(config.proxy_protocol_from)
        self._handed = tuple(sockets)
        self._sock: socket.socket | None = self._handed[0] if self._handed else None
        self._servers: list[asyncio.AbstractServer] = []  # one per listening socket
        self._idle_waiter: asyncio.Future[None] | None = None
        # TLS termination (http listeners with ``tls:``); handshakes that never reach
        # connection_made are counted when their protocol object is dropped.
        self.tls: ServerTls | None = ServerTls(config.tls) if config.tls is not None else None
        self._handshaking: set[int] = set()
        # max_connections_per_client: counted once the client address is known (after a PROXY
        # header, when the listener accepts one).
        limit = config.max_connections_per_client
        self.client_connections = ClientConnections(limit) if limit is not None else None
        self._client_of: dict[Drainable, str] = {}

    @abc.abstractmethod
    def protocol_factory(self) -> asyncio.Protocol:
        """A new protocol object for one accepted connection."""

    @property
    def address(self) -> Address:
        """The bound address (with the real port when the config said port 0)."""
        assert self._sock is not None, "listener not started"
        return bound_address(self._sock)

    async def start(self) -> None:
        """Bind (unless given a socket) and start accepting. Raises OSError if binding fails.

        Binding itself, the listener opens ``accept_sockets`` sockets on the address
        (``bind_sockets``). libuv accepts one connection per ready socket per event-loop pass,
        so with one socket a busy loop takes one new connection per pass, and the pass's fixed
        costs (the poll, the outbox's flush) are paid once per connection. With four, a pass
        takes up to four, and their writes leave together (issue 8, l7-newconn:
        benchmarks/README.md). Sockets handed in are served as they are: with ``workers:``, the
        supervisor binds ``accept_sockets`` per worker and hands each worker its own."""
        loop = asyncio.get_running_loop()
        owned = not self._handed
        if owned:
            group = bind_sockets(self.config.bind, self.config.accept_sockets, backlog=self.config.backlog)
        else:
            group = list(self._handed)
        self._sock = group[0]
        try:
            for sock in group:
                self._servers.append(await self._serve(loop, sock))
        except BaseException:
            serving = len(self._servers)  # these sockets close with their servers
            self._close_servers()
            if owned:
                for sock in group[serving:]:
                    sock.close()
            raise
        log.info("listener %s (%s) on %s", self.name, self.config.mode, self.address)

    async def _serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> asyncio.AbstractServer:
        if self.tls is not None:
            return await loop.create_server(
                self._tls_protocol_factory,
                sock=sock,
                backlog=self.config.backlog,
                ssl=self.tls.context,
                ssl_handshake_timeout=self.config.limits.request_header_timeout,
            )
        return await loop.create_server(self.protocol_factory, sock=sock, backlog=self.config.backlog)

    def _tls_protocol_factory(self) -> asyncio.Protocol:
        protocol = self.protocol_factory()
        key = id(protocol)
        self._handshaking.add(key)
        # The weak reference is to a token the protocol holds, not to the protocol: a protocol
        # may be an instance of a class compiled by mypyc (benchmarks/README.md, "a compiled
        # build"), whose instances mypyc frees without clearing their weak references (the
        # interpreter then crashes in the collector, mypyc/mypyc#1102).
        token = HandshakeToken()
        cast(WatchedProtocol, protocol).handshake_token = token
        weakref.finalize(token, self._protocol_dropped, key)
        return protocol

    def _protocol_dropped(self, key: int) -> None:
        if key in self._handshaking:
            self._handshaking.discard(key)
            if self.tls is not None:
                self.tls.handshake_failures += 1

    def admit(self, conn: Drainable) -> bool:
        """Register a new connection; False (and counted) when over ``max_connections`` or stopping."""
        if self._handshaking:
            self._handshaking.discard(id(conn))
        if not self.accepting or len(self.connections) >= self.config.max_connections:
            self.stats.rejected_total += 1
            return False
        self.connections.add(conn)
        self.stats.connections_total += 1
        return True

    def claim_client(self, conn: Drainable, host: str) -> bool:
        """Count ``conn`` against its client's ``max_connections_per_client``; False: refuse it."""
        counter = self.client_connections
        if counter is None:
            return True
        if not counter.claim(host):
            self.stats.rejected_total += 1
            return False
        self._client_of[conn] = host
        return True

    def forget(self, conn: Drainable) -> None:
        """Unregister a connection (idempotent); wakes ``wait_idle`` when the last one goes."""
        if self.client_connections is not None:
            host = self._client_of.pop(conn, None)
            if host is not None:
                self.client_connections.release(host)
        self.connections.discard(conn)
        if not self.connections and self._idle_waiter is not None and not self._idle_waiter.done():
            self._idle_waiter.set_result(None)

    def stop_accepting(self) -> None:
        """Close the listening sockets; live connections go on."""
        self.accepting = False
        self._close_servers()

    def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def drain(self, timeout: float) -> int:
        """Ask every live connection to finish, wait up to ``timeout`` s, abort the rest.

        Returns how many connections had to be aborted.
        """
        self.stop_accepting()
        for conn in list(self.connections):
            conn.begin_shutdown()
        if self.connections:
            self._idle_waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._idle_waiter), timeout)
            except TimeoutError:
                pass
        leftover = list(self.connections)
        for conn in leftover:
            conn.abort()
        if leftover:
            log.warning("listener %s: aborted %d connections at drain timeout", self.name, len(leftover))
        return len(leftover)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Disable Nagle on a TCP transport (small writes go out at once)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


_LINGER_ZERO = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Close a TCP transport with a reset (RST), discarding unsent data.

    ``transport.abort()`` alone closes the socket, and the kernel then sends a FIN, which the peer
    takes for a normal end of stream (a truncated upload would look complete). ``SO_LINGER`` 0
    makes the close a reset, so the peer learns the connection was aborted. Idempotent.
    """
    if transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        except OSError:
            pass
    transport.abort()


Factory = Callable[[], asyncio.Protocol]

"""DnsListener: a ``mode: dns`` listener answering over UDP and TCP on the same address."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from lbproxy.dns.responder import DnsResponder
from lbproxy.net.listener import BaseListener

if TYPE_CHECKING:
    from lbproxy.config.model import ListenerConfig
    from lbproxy.pool.pool import Pool

log = logging.getLogger("lbproxy.dns")

TCP_IDLE_TIMEOUT = 10.0
UDP_MAX = 65535


class DnsUdp(asyncio.DatagramProtocol):
    def __init__(self, listener: DnsListener) -> None:
        self.listener = listener
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.listener.stats.bytes_in += len(data)
        answer = self.listener.responder.respond(data, UDP_MAX)
        if answer is not None and self.transport is not None:
            self.listener.stats.bytes_out += len(answer)
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns listener %s: %s", self.listener.name, exc)


class DnsTcp(asyncio.Protocol):
    """DNS over TCP: 2-byte length-prefixed messages, several per connection."""

    def __init__(self, listener: DnsListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp_transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tcp_transport
        if not self.listener.admit(self):
            tcp_transport.abort()
            return
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(TCP_IDLE_TIMEOUT, self.abort)

    def data_received(self, data: bytes) -> None:
        self.listener.stats.bytes_in += len(data)
        self.buffer += data
        self._arm()
        while len(self.buffer) >= 2:
            (length,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) < 2 + length:
                if len(self.buffer) > 2 + UDP_MAX:
                    self.abort()
                return
            message, self.buffer = self.buffer[2 : 2 + length], self.buffer[2 + length :]
            answer = self.listener.responder.respond(message, None)
            if answer is None:
                self.abort()
                return
            assert self.transport is not None
            self.listener.stats.bytes_out += len(answer) + 2
            self.transport.write(struct.pack("!H", len(answer)) + answer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.listener.forget(self)

    def begin_shutdown(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class DnsListener(BaseListener):
    """Answers for one zone from the live pools, over UDP and TCP."""

    def __init__(self, config: ListenerConfig, pools: Mapping[str, Pool], **kwargs: object) -> None:
        super().__init__(config, **kwargs)  # type: ignore[arg-type]
        assert config.dns is not None
        self.pools = pools
        self.responder = DnsResponder(config.dns, pools, config.bind.host)
        self.udp: asyncio.DatagramTransport | None = None

    def protocol_factory(self) -> asyncio.Protocol:
        return DnsTcp(self)

    async def start(self) -> None:
        await super().start()
        address = self.address  # the real port when the config said 0
        self.responder.listener_host = address.host
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: DnsUdp(self), local_addr=(address.host, address.port)
        )
        self.udp = transport

    def update(self, config: ListenerConfig) -> None:
        """Reload: new zone, records, ttl or limits."""
        assert config.dns is not None
        self.config = config
        self.responder = DnsResponder(config.dns, self.pools, self.address.host)

    def stop_accepting(self) -> None:
        super().stop_accepting()
        if self.udp is not None:
            self.udp.close()
            self.udp = None

"""A TLS client that sends close_notify right after its request still gets the response that
lbproxy read in the same event-loop pass (the outbox holds writes to the pass's end, and
asyncio's SSL layer drops what is written once the client's close_notify has been read)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

from tests.backends_misbehaving import proxy_config, scripted  # noqa: F401  (scripted is a fixture)
from tests.certs import LocalCA
from tests.outbox_passes import HeldResponse, stretched_pass, until_held


class MemoryTlsClient:
    """A TLS client over a raw socket and memory BIOs: unlike asyncio's streams, it can send
    close_notify and go on reading (OpenSSL's half-close)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_name: str) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_name)
        self.loop = asyncio.get_running_loop()

    async def _send_pending(self) -> None:
        data = self.outgoing.read()
        if data:
            await self.loop.sock_sendall(self.sock, data)

    async def _receive(self) -> bool:
        data = await self.loop.sock_recv(self.sock, 65536)
        if data:
            self.incoming.write(data)
        return bool(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._send_pending()
                assert await self._receive(), "closed during the handshake"
        await self._send_pending()

    async def send(self, data: bytes) -> None:
        self.tls.write(data)
        await self._send_pending()

    async def send_close_notify(self) -> None:
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent; the server's own close_notify is read below
        await self._send_pending()

    async def read_until_close(self) -> bytes:
        """Application data until the server's close_notify or the end of the connection."""
        received = b""
        while True:
            try:
                while True:
                    received += self.tls.read(65536)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return received
            if not await self._receive():
                return received


async def test_a_response_held_when_the_client_sends_close_notify_still_arrives(
    make_daemon, scripted, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    ca = LocalCA(tmp_path / "ca")
    cert = ca.issue("shop.test")
    held = HeldResponse()
    backend = await scripted(held)
    listener = {"tls": {"certificates": [{"cert": str(cert.cert), "key": str(cert.key)}]}}
    daemon = await make_daemon(proxy_config([backend.port], listener=listener))
    outbox = daemon.upstreams.outbox
    sock = socket.create_connection(daemon.listener_address("public"))
    sock.setblocking(False)
    try:
        client = MemoryTlsClient(sock, ssl.create_default_context(cafile=str(ca.cert)), "shop.test")
        async with asyncio.timeout(10):
            await client.handshake()
            await client.send(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            await held.got_request.wait()
            # As in a busy pass that reads the response and then the client's close_notify.
            async with stretched_pass(outbox):
                held.release.set()
                await until_held(outbox)  # lbproxy has read the response and holds it
                await client.send_close_notify()
                await asyncio.sleep(0.2)  # lbproxy reads the close_notify
            received = await client.read_until_close()
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"hello"), received

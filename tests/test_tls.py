"""TLS with real certificates from a local CA and real clients: passthrough routing by SNI."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from lbproxy.demo.backends import EchoTcpProtocol
from tests.certs import LocalCA


class TlsEcho(asyncio.Protocol):
    """A TLS server (the backend terminates TLS) that answers with its name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(f"hello from {self.name}\n".encode())  # type: ignore[attr-defined]


async def test_sni_passthrough_routes_to_two_pools(make_daemon, tmp_path: Path, tcp_backends) -> None:
    ca = LocalCA(tmp_path / "ca")
    api_cert = ca.issue("api.shop.test")
    web_cert = ca.issue("www.shop.test", "*.shop.test")
    loop = asyncio.get_running_loop()
    servers = []
    ports = {}
    for name, cert in (("api", api_cert), ("web", web_cert)):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert.cert, cert.key)
        server = await loop.create_server(lambda n=name: TlsEcho(n), "127.0.0.1", 0, ssl=context)
        servers.append(server)
        ports[name] = server.sockets[0].getsockname()[1]
    plain = await tcp_backends(1)
    daemon = await make_daemon(
        f"""
        pools:
          api: {{backends: ["127.0.0.1:{ports['api']}"]}}
          web: {{backends: ["127.0.0.1:{ports['web']}"]}}
          fallback: {{backends: ["127.0.0.1:{plain[0]}"]}}
        listeners:
          - name: tls
            bind: 127.0.0.1:0
            mode: tcp
            pool: fallback
            client_hello_timeout: 0.5s
            sni_routes:
              - {{server_name: api.shop.test, pool: api}}
              - {{server_name: "*.shop.test", pool: web}}
        """
    )
    host, port = daemon.listener_address("tls")
    client = ssl.create_default_context(cafile=str(ca.cert))
    try:
        for name, expected in (("api.shop.test", "api"), ("www.shop.test", "web"), ("img.shop.test", "web")):
            reader, writer = await asyncio.open_connection(host, port, ssl=client, server_hostname=name)
            async with asyncio.timeout(5):
                assert await reader.readline() == f"hello from {expected}\n".encode()
            # the certificate the client verified is the backend's own: TLS was not terminated
            cert = writer.get_extra_info("peercert")
            names = [value for _, value in cert["subjectAltName"]]
            assert (name in names) or any(n.startswith("*.") and name.endswith(n[1:]) for n in names)
            writer.close()
        # a client that never sends a ClientHello is closed after client_hello_timeout
        reader, writer = await asyncio.open_connection(host, port)
        async with asyncio.timeout(3):
            try:
                assert await reader.read() == b""
            except ConnectionResetError:
                pass
        writer.close()
        # plain bytes are not TLS: closed without reaching any backend
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(3):
            try:
                assert await reader.read() == b""
            except ConnectionResetError:
                pass
        writer.close()
        assert daemon.pools["fallback"].backends[0].connections_total == 0
    finally:
        for server in servers:
            server.close()
    _ = EchoTcpProtocol

"""TLS with real certificates from a local CA and real clients: passthrough routing by SNI."""

from __future__ import annotations

import asyncio
import json
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


async def test_tls_termination_sni_certificates_reload_and_failures(make_daemon, tmp_path: Path, http_backends) -> None:
    import shutil

    from lbproxy.config.loader import load_config_text

    ca = LocalCA(tmp_path / "ca")
    shop = ca.issue("shop.test")
    api = ca.issue("api.test", "*.api.test")
    web = await http_backends(1)
    text = f"""
        admin: {{bind: "127.0.0.1:0"}}
        pools:
          web: {{backends: ["127.0.0.1:{web[0]}"]}}
        listeners:
          - name: https
            bind: 127.0.0.1:0
            routes: [{{pool: web}}]
            tls:
              certificates:
                - {{cert: "{shop.cert}", key: "{shop.key}"}}
                - {{cert: "{api.cert}", key: "{api.key}"}}
          - name: plain
            bind: 127.0.0.1:0
            redirect_https: true
            routes: [{{pool: web}}]
        """
    daemon = await make_daemon(text)
    host, port = daemon.listener_address("https")
    curl = shutil.which("curl")
    assert curl is not None

    async def curl_get(name: str, *extra: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            curl, "-s", "-v", "--max-time", "10", "--cacert", str(ca.cert), "--resolve", f"{name}:{port}:{host}",
            *extra, f"https://{name}:{port}/hello", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await curl_get("shop.test")
    assert code == 0, err
    doc = json.loads(out)
    assert ("X-Forwarded-Proto", "https") in [tuple(h) for h in doc["headers"]]
    assert "subject: CN=shop.test" in err and "ALPN: server accepted http/1.1" in err
    code, out, err = await curl_get("v1.api.test")
    assert code == 0 and "subject: CN=api.test" in err, "SNI picks the certificate that names the host"
    # plain-HTTP listener redirects to https
    ph, pp = daemon.listener_address("plain")
    from tests.client import fetch

    r = await fetch(ph, pp, path="/x?y=1", host="shop.test")
    assert r.status == 308 and r.header("Location") == "https://shop.test/x?y=1"
    # a failed handshake is counted and the listener keeps serving
    code, _, _ = await curl_get("shop.test", "--tlsv1.2", "--tls-max", "1.1")
    assert code != 0
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
    async with asyncio.timeout(5):
        try:
            await reader.read()
        except ConnectionError:
            pass
    writer.close()
    import gc

    gc.collect()
    assert daemon.listeners["https"].tls is not None
    assert daemon.listeners["https"].tls.handshake_failures >= 2
    admin = daemon.admin.address
    metrics = (await fetch(admin.host, admin.port, path="/metrics")).body.decode()
    assert 'lbproxy_tls_handshake_failures_total{listener="https"}' in metrics
    code, _, err = await curl_get("shop.test")
    assert code == 0
    # reload swaps the certificate without closing the listener
    renewed = ca.issue("shop.test", "www.shop.test")
    new_text = text.replace(str(shop.cert), str(renewed.cert)).replace(str(shop.key), str(renewed.key))
    await daemon.reload(load_config_text(new_text, "<reload>"))
    code, _, err = await curl_get("www.shop.test")
    assert code == 0 and "subject: CN=shop.test" in err and "www.shop.test" in err, err


async def test_tls_to_backends_with_verification_and_health_checks(make_daemon, tmp_path: Path) -> None:
    """A pool with ``tls:`` speaks TLS to its backends, verifies them, and so do its checks."""
    from lbproxy.demo.backends import EchoHttpProtocol
    from tests.client import fetch

    ca = LocalCA(tmp_path / "ca")
    good = ca.issue("backend.internal")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(good.cert, good.key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoHttpProtocol("tls-backend"), "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        daemon = await make_daemon(
            f"""
            pools:
              secure:
                backends: ["127.0.0.1:{port}"]
                tls: {{ca_file: "{ca.cert}", server_name: backend.internal}}
                health_check: {{type: http, interval: 0.1, timeout: 1}}
              wrong_name:
                backends: ["127.0.0.1:{port}"]
                tls: {{ca_file: "{ca.cert}", server_name: other.internal}}
                outlier_detection: false
            listeners:
              - name: public
                bind: 127.0.0.1:0
                routes:
                  - {{match: {{path_prefix: /wrong}}, pool: wrong_name}}
                  - {{pool: secure}}
            """
        )
        host, lport = daemon.listener_address("public")
        r = await fetch(host, lport, path="/over-tls")
        assert r.status == 200 and r.json()["backend"] == "tls-backend"
        record = daemon.health.pools["secure"].records[daemon.pools["secure"].backends[0]]
        async with asyncio.timeout(5):
            while record.checks_passed < 2:
                await asyncio.sleep(0.05)
        assert record.last_detail == "status 200", "the http check went over TLS"
        r = await fetch(host, lport, path="/wrong")
        assert r.status == 502, "a certificate that doesn't name the backend is refused"
    finally:
        server.close()

"""benchmarks' browser request (l7-browser, hotpath.py --browser): what wrk really sends.

``l7-browser`` is meant to measure a browser's request instead of wrk's bare one, so the fields
must reach the proxy as a browser sends them: every one of ``browser_request.FIELDS``, once,
after a single Host. ``run_wrk`` is run against a real keep-alive server on loopback for a
second, and the heads that server read are compared with ``request_head``, the head
``hotpath.py --browser`` feeds lbproxy's session.
"""

from __future__ import annotations

import shutil
import socket
import threading
from types import SimpleNamespace

from tests.bench_modules import bench_run

browser_request = bench_run.browser_request


class _KeepAliveServer:
    """Answers every request on a connection with a short response; keeps the first heads."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.heads: list[bytes] = []
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buffered = b""
            while not self.stopping:
                while b"\r\n\r\n" not in buffered:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        return
                    if not chunk:
                        return
                    buffered += chunk
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                self.requests += 1
                if len(self.heads) < 3:
                    self.heads.append(head + b"\r\n\r\n")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

    def stop(self) -> None:
        self.stopping = True
        self.acceptor.join(5)
        for thread in self.threads:
            thread.join(6)
        self.sock.close()


def fields_of(head: bytes) -> list[tuple[bytes, bytes]]:
    lines = head.split(b"\r\n")[1:-2]
    return [(name.lower(), value.strip()) for name, _, value in (line.partition(b":") for line in lines)]


def test_wrk_sends_every_browser_field_once_after_one_host() -> None:
    assert shutil.which("wrk"), "wrk is needed (apt-get install -y wrk; .ci/run installs it)"
    server = _KeepAliveServer()
    try:
        data = bench_run.run_wrk(SimpleNamespace(load_cpus="0"), server.port, 1.0, 2, fields=browser_request.FIELDS)
    finally:
        server.stop()
    assert data["requests"] > 10 and server.requests >= data["requests"]
    expected = fields_of(browser_request.request_head())
    assert len(expected) == 16 and expected[0] == (b"host", browser_request.HOST.encode())
    for head in server.heads:
        assert head.startswith(b"GET / HTTP/1.1\r\n"), head
        sent = fields_of(head)
        assert sorted(sent) == sorted(expected), head  # wrk may order the -H fields its own way
        assert len(head) == len(browser_request.request_head())


def test_request_head_names_its_connection_value() -> None:
    closing = browser_request.request_head(connection="close")
    assert b"\r\nConnection: close\r\n" in closing and b"keep-alive" not in closing
    assert closing.endswith(b"\r\n\r\n") and closing.count(b"\r\n\r\n") == 1

"""A client connection's close waits in line with the pass's writes (Outbox.close_at_pass_end):
what lbproxy holds for the client still reaches it when the client's EOF arrives in the same
pass, and nothing the client sends after lbproxy decided to close is forwarded."""

from __future__ import annotations

import asyncio
import socket

from tests.backends_misbehaving import (  # noqa: F401  (scripted is a fixture)
    BackendConnection,
    Request,
    proxy_config,
    scripted,
)
from tests.outbox_passes import HeldResponse, stretched_pass, until_held


async def test_a_response_held_when_a_plain_client_half_closes_still_arrives(make_daemon, scripted) -> None:  # type: ignore[no-untyped-def]
    held = HeldResponse()
    backend = await scripted(held)
    daemon = await make_daemon(proxy_config([backend.port]))
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(daemon.listener_address("public"))
    sock.setblocking(False)
    received = b""
    try:
        async with asyncio.timeout(10):
            await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
            await held.got_request.wait()
            async with stretched_pass(daemon.upstreams.outbox):
                held.release.set()
                await until_held(daemon.upstreams.outbox)  # the response, read and held
                sock.shutdown(socket.SHUT_WR)
                await asyncio.sleep(0.2)  # lbproxy reads the client's EOF in the same pass
            while chunk := await loop.sock_recv(sock, 65536):
                received += chunk
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"hello"), received


async def test_a_request_read_after_the_close_was_decided_is_not_forwarded(make_daemon, scripted) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    async def answer(conn: BackendConnection, request: Request) -> bool:
        seen.append(request.target)
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    backend = await scripted(answer)
    daemon = await make_daemon(proxy_config([backend.port]))
    listener = daemon.listeners["public"]
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(daemon.listener_address("public"))
    sock.setblocking(False)
    try:
        async with asyncio.timeout(10):
            while not listener.connections:
                await asyncio.sleep(0.01)
            (session,) = listener.connections
            async with stretched_pass(daemon.upstreams.outbox):
                session.begin_shutdown()  # idle: its close waits for the pass's end
                await loop.sock_sendall(sock, b"POST /late HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\n\r\n")
                await asyncio.sleep(0.3)
            assert await asyncio.wait_for(loop.sock_recv(sock, 65536), 5) == b"", "closed without an answer"
    finally:
        sock.close()
    assert seen == [], f"a request read after the close was decided reached the backend: {seen}"

"""The demo: three HTTP and three TCP backends plus lbproxy in front of them."""

from __future__ import annotations

import asyncio
import sys

from lbproxy.config.loader import load_config_text
from lbproxy.demo.backends import server_port, start_http_backend, start_tcp_backend
from lbproxy.runtime.daemon import Daemon

DEMO_TEMPLATE = """\
admin:
  bind: 127.0.0.1:{admin_port}
pools:
  web:
    strategy: round_robin
    backends:
{web_backends}
  echo:
    strategy: least_connections
    backends:
{echo_backends}
listeners:
  - name: http
    bind: 127.0.0.1:{http_port}
    mode: http
    routes:
      - pool: web
  - name: tcp
    bind: 127.0.0.1:{tcp_port}
    mode: tcp
    pool: echo
drain_timeout: 5s
"""


def demo_config_text(http_ports: list[int], tcp_ports: list[int], http_port: int, tcp_port: int, admin_port: int) -> str:
    web = "\n".join(f"      - address: 127.0.0.1:{p}" for p in http_ports)
    echo = "\n".join(f"      - address: 127.0.0.1:{p}" for p in tcp_ports)
    return DEMO_TEMPLATE.format(
        admin_port=admin_port, web_backends=web, echo_backends=echo, http_port=http_port, tcp_port=tcp_port
    )


async def run_demo(http_port: int, tcp_port: int, admin_port: int, ready: asyncio.Event | None = None) -> Daemon:
    """Start everything; returns the running Daemon (the caller waits for its stop)."""
    http_servers = [await start_http_backend(f"web-{i}") for i in (1, 2, 3)]
    tcp_servers = [await start_tcp_backend(f"echo-{i}") for i in (1, 2, 3)]
    text = demo_config_text(
        [server_port(s) for s in http_servers], [server_port(s) for s in tcp_servers], http_port, tcp_port, admin_port
    )
    daemon = Daemon(load_config_text(text, "<demo>"))
    await daemon.start()
    daemon.demo_servers = http_servers + tcp_servers  # type: ignore[attr-defined]
    h, hp = daemon.listener_address("http")
    t, tp = daemon.listener_address("tcp")
    assert daemon.admin is not None
    a = daemon.admin.address
    print(
        f"""lbproxy demo is running (Ctrl-C to stop)

  http listener   http://{h}:{hp}/   round robin over web-1, web-2, web-3
  tcp listener    {t}:{tp}           least connections over echo-1, echo-2, echo-3
  admin           http://{a}/metrics  /status  /healthz

Try:
  for i in 1 2 3 4 5 6; do curl -s http://{h}:{hp}/hello | cut -c1-40; done
  curl -s -H 'X-Request-Id: demo-1' http://{h}:{hp}/api -d 'some body'
  echo ping | nc -q1 {t} {tp}
  curl -s http://{a}/status
  curl -s http://{a}/metrics | grep lbproxy_requests
""",
        flush=True,
    )
    sys.stdout.flush()
    return daemon

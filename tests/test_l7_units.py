"""Pure bookkeeping of the http listener and session (no sockets): memos and per-connection state
that issue 8's hot-path work introduced."""

from __future__ import annotations

from lbproxy.config.loader import load_config_text
from lbproxy.l7 import listener as listener_module
from lbproxy.l7.listener import HttpListener, UpstreamRegistry
from lbproxy.l7.session import HttpSession
from lbproxy.pool.pool import Pool

CONFIG = """
pools:
  web: {backends: ['127.0.0.1:1']}
listeners:
  - name: public
    bind: 127.0.0.1:0
    routes: [{pool: web}]
"""


def make_listener() -> HttpListener:
    config = load_config_text(CONFIG)
    pools = {name: Pool(pc) for name, pc in config.pools.items()}
    return HttpListener(config.listeners[0], pools, UpstreamRegistry())


async def test_forwarding_prefix_is_shared_per_client_and_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    listener = make_listener()
    first = listener.forwarded_prefix("10.0.0.1")
    assert first == b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: "
    assert listener.forwarded_prefix("10.0.0.1") is first, "one copy per client"
    monkeypatch.setattr(listener_module, "FORWARDED_PREFIXES_MAX", 8)
    for i in range(50):
        assert listener.forwarded_prefix(f"10.1.0.{i}").startswith(b"X-Forwarded-For: 10.1.0.")
    assert len(listener._forwarded_prefixes) <= 8


async def test_an_idle_session_holds_no_pipeline_buffer() -> None:
    session = HttpSession(make_listener())
    assert session.queue == [] and type(session.queue) is list

#!/usr/bin/env python3
"""What counting costs per request: lbproxy's per-request accounting, timed in isolation.

The data path counts into plain ints and histograms (``HttpListener.record`` once per request,
``stats.bytes_*`` per write, ``Backend.acquire/release/note_status``); prometheus-client only runs
when /metrics is scraped. This times exactly those calls for a realistic exchange and prints
them next to the CPU per request that benchmarks/run.py measures for L7 keep-alive.

    python benchmarks/metrics_cost.py [--cpu-us-per-request 51.5]
"""

from __future__ import annotations

import argparse
import asyncio
import textwrap
import timeit

from lbproxy.config.loader import load_config_text
from lbproxy.l7.exchange import Exchange
from lbproxy.runtime.daemon import Daemon

CONFIG = textwrap.dedent(
    """
    pools:
      web: {backends: ["127.0.0.1:9"]}
    listeners:
      - {name: public, bind: 127.0.0.1:0, routes: [{name: all, pool: web}]}
    """
)


async def measure(rounds: int) -> tuple[float, float]:
    daemon = Daemon(load_config_text(CONFIG))
    await daemon.start()
    try:
        listener = daemon.listeners["public"]
        session = listener.protocol_factory()
        exchange = Exchange(session)  # type: ignore[arg-type]
        route = listener.router.routes[0]  # type: ignore[attr-defined]
        exchange.route = route
        exchange.pool = route.pool
        backend = route.pool.backends[0]
        exchange.backend = backend
        exchange.status = 200

        def per_request() -> None:
            backend.acquire()
            listener.stats.bytes_in += 78
            backend.note_status(200)
            listener.stats.bytes_out += 120
            session._account(exchange)  # type: ignore[attr-defined]  # releases the backend, counts

        def baseline() -> None:
            pass

        counted = min(timeit.repeat(per_request, number=rounds, repeat=5)) / rounds
        empty = min(timeit.repeat(baseline, number=rounds, repeat=5)) / rounds
        return counted - empty, empty
    finally:
        await daemon.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200_000)
    parser.add_argument("--cpu-us-per-request", type=float, default=51.5,
                        help="lbproxy's CPU per request from benchmarks/run.py (L7 keep-alive)")  # fmt: skip
    args = parser.parse_args()
    cost, _ = asyncio.run(measure(args.rounds))
    share = cost * 1e6 / args.cpu_us_per_request
    print(f"counting per request: {cost * 1e6:.3f} us = {share:.1%} of {args.cpu_us_per_request} us CPU per request")


if __name__ == "__main__":
    main()

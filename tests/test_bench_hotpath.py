"""benchmarks/hotpath.py still drives the real L7 session, exchange and upstream connection.

The harness reaches into lbproxy's internals (HttpSession, UpstreamConnection, the outbox), so a
refactoring can break it without any other test noticing. These run it briefly, as a user would,
and check what it reports; the figures themselves are for people, never asserted on.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HOTPATH = Path(__file__).resolve().parent.parent / "benchmarks" / "hotpath.py"


def hotpath(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(HOTPATH), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("mode", [[], ["--new-connections"]], ids=["keep-alive", "new-connections"])
def test_hotpath_times_requests_through_the_real_session(mode: list[str]) -> None:
    out = hotpath("--requests", "300", "--repeat", "1", *mode)
    found = re.search(r"([\d.]+) µs of lbproxy Python per (keep-alive request|new connection)", out)
    assert found is not None, out
    assert float(found.group(1)) > 0


@pytest.mark.interpreted
@pytest.mark.parametrize("mode", [[], ["--new-connections"]], ids=["keep-alive", "new-connections"])
def test_hotpath_counts_bytecodes_by_lbproxy_function(mode: list[str]) -> None:
    out = hotpath("--bytecodes", *mode)
    lines = out.splitlines()
    total = re.match(r"([\d,]+) bytecodes of lbproxy Python per ", lines[0])
    assert total is not None, out
    per_function = {}
    for line in lines[1:]:
        count, where = line.split()
        per_function[where] = float(count)
    # The functions every request runs through are there, and only lbproxy's.
    assert per_function["lbproxy/l7/exchange.py:Exchange.prepare"] > 50
    assert per_function["lbproxy/l7/session.py:HttpSession.data_received"] > 10
    assert per_function["lbproxy/net/outbox.py:Outbox.flush"] > 10
    assert all(where.startswith("lbproxy/") for where in per_function), per_function
    # The listing is a share of the total (the 40 largest), never more than it.
    assert sum(per_function.values()) <= int(total.group(1).replace(",", "")) + 1
    if mode:
        assert "lbproxy/l7/session.py:HttpSession.connection_made" in per_function


def bytecodes_by_function(*args: str) -> dict[str, float]:
    lines = hotpath("--bytecodes", *args).splitlines()
    return {where: float(count) for count, where in (line.split() for line in lines[1:])}


@pytest.mark.interpreted
def test_hotpath_browser_request_carries_its_fields_through_the_session() -> None:
    """--browser sends a browser's 16 fields instead of wrk's Host: each goes through on_header,
    and a keep-alive and a closing request both complete (run() asserts every response)."""
    wrk = bytecodes_by_function()
    browser = bytecodes_by_function("--browser")
    on_header = "lbproxy/l7/session.py:HttpSession.on_header"
    assert browser[on_header] >= 14 * wrk[on_header], (browser[on_header], wrk[on_header])
    closing = bytecodes_by_function("--browser", "--new-connections")
    assert closing[on_header] >= 14 * wrk[on_header]
    assert "lbproxy/l7/session.py:HttpSession.connection_made" in closing

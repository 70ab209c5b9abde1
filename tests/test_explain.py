"""``lbproxy explain`` as a real process: route choice, reasons, pool, rewrites, redirects."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

CONFIG = str(ROOT / "config" / "routing.yaml")


def explain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbproxy", "explain", "-c", CONFIG, *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip


def test_explain_names_the_route_and_why_earlier_ones_did_not_match() -> None:
    out = explain("GET http://shop.example.com/api/payments?x=1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "  1. admin: no, path '/api/payments' does not start with '/admin'" in lines
    assert "  2. payments: MATCHES" in lines
    assert any(line.startswith("pool      payments (cookie_affinity)") for line in lines)
    assert "            127.0.0.1:8001 weight 1" in lines
    assert "upstream  GET /v2/payments?x=1 (Host: shop.example.com)" in lines


def test_explain_normalises_dot_segments_and_shows_hash_affinity() -> None:
    out = explain("http://shop.example.com/api/../admin")
    assert "          path normalised to /admin" in out.stdout and "  1. admin: MATCHES" in out.stdout
    out = explain("GET http://shop.example.com/api/products/7", "-H", "Cookie: user_id=42")
    assert "cookie user_id='42' hashes to 127.0.0.1:8003" in out.stdout
    assert "request headers: set X-Team: catalog" in out.stdout


def test_explain_redirect_and_no_route() -> None:
    out = explain("GET http://x:8080/old/a?b=1")
    assert "result    redirect 301 to http://x:8080/new/a?b=1" in out.stdout
    out = explain("GET http://x:8080/nothing")
    assert "result    404: no route matches" in out.stdout


def test_explain_bad_input() -> None:
    out = explain("GET http://x/", "-H", "not a header")
    assert out.returncode == 2 and "Name: value" in out.stderr

"""The header fields a browser sends for a page, for the benchmarks that measure a realistic request.

wrk's request carries a Host field and nothing else, so ``l7-keepalive`` measures the least a
proxy can do per request. A browser (Chromium 131 here, navigating to a page with a session
cookie) sends 16 fields, 686 bytes: what ``run.py``'s ``l7-browser`` scenario sends
through every proxy (wrk's ``-H``), and what ``hotpath.py --browser`` feeds lbproxy's session.
Each field costs lbproxy a parser callback into Python, where haproxy and nginx stay in C.
"""

from __future__ import annotations

HOST = "bench.example.com"

# After Host, in the order Chromium sends them.
FIELDS: tuple[tuple[str, str], ...] = (
    ("Connection", "keep-alive"),
    ("sec-ch-ua", '"Chromium";v="131", "Not_A Brand";v="24"'),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", '"Linux"'),
    ("Upgrade-Insecure-Requests", "1"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/131.0.0.0 Safari/537.36"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-Mode", "navigate"),
    ("Sec-Fetch-User", "?1"),
    ("Sec-Fetch-Dest", "document"),
    ("Referer", f"https://{HOST}/"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-GB,en;q=0.9"),
    ("Cookie", "session=5f2b9c1e8a7d4e3f9b6a0c2d1e4f7a8b; theme=dark"),
)


def request_head(connection: str = "keep-alive") -> bytes:
    """The whole request head for ``/``, with ``connection`` as its Connection field's value."""
    fields = "".join(f"{name}: {connection if name == 'Connection' else value}\r\n" for name, value in FIELDS)
    return f"GET / HTTP/1.1\r\nHost: {HOST}\r\n{fields}\r\n".encode("latin-1")

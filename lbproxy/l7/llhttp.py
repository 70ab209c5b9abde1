"""What lbproxy relies on httptools' parser (llhttp) to refuse, checked once at import.

The L7 fast paths read facts from the parser instead of re-deriving them (issue 8):
- a response head ends at its first empty line, because llhttp accepts only CRLF line ends
  (``UpstreamConnection`` cuts heads from the raw bytes there);
- a request without a Connection field is kept alive only if it is HTTP/1.1, because llhttp
  refuses every version but 0.9, 1.0, 1.1 and 2.0 (``Exchange.prepare`` then skips asking).
Older llhttp releases were lenient on both; importing lbproxy's L7 code with one fails loudly
instead of relaying what the fast paths would misread.
"""

from __future__ import annotations

import httptools


class _Probe:
    def on_headers_complete(self) -> None:
        raise AssertionError("accepted")


def _refuses(parser_class: type, data: bytes) -> bool:
    try:
        parser_class(_Probe()).feed_data(data)
    except httptools.HttpParserCallbackError:
        return False
    except httptools.HttpParserError:
        return True
    return False


def check() -> None:
    """Raise ImportError when the installed httptools accepts what lbproxy needs refused."""
    problems = []
    if not _refuses(httptools.HttpResponseParser, b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"):
        problems.append("bare-LF response heads")
    if not _refuses(httptools.HttpRequestParser, b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"):
        problems.append("HTTP/1.2 requests")
    if problems:
        raise ImportError(f"httptools {httptools.__version__} accepts {' and '.join(problems)}; lbproxy needs >= 0.6.1")


check()

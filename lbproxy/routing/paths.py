"""Path normalisation applied before routes are matched (and to the path sent upstream).

Exactly this is normalised, in this order (RFC 3986 sections 6.2.2.1, 6.2.2.2 and 5.2.4):
1. Percent-encodings of *unreserved* characters (``A-Z a-z 0-9 - . _ ~``) are decoded, so
   ``/%61pi`` is ``/api`` and ``/%2e%2e/`` is ``/../``. Every other percent-encoding is kept, with
   its hex digits upper-cased (``%2f`` becomes ``%2F``: an encoded slash never splits a segment).
2. Dot segments are removed: ``/api/../admin`` is ``/admin``, ``/a/./b`` is ``/a/b``; ``..`` never
   climbs above the root.
Nothing else changes: no slash merging, no case folding, no decoding of reserved characters. The
query string is not touched. A path that is ``*`` (``OPTIONS *``) is left as is.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def normalize_path(path: str) -> str:
    """The normalised form of a request path (see the module docstring for exactly what changes)."""
    if path == "*" or not path:
        return path
    if "%" in path:
        path = _PERCENT.sub(_decode_unreserved, path)
    if "." not in path:
        return path
    return remove_dot_segments(path)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path."""
    segments = path.split("/")
    output: list[str] = []
    for i, segment in enumerate(segments):
        if segment == ".":
            if i == len(segments) - 1:
                output.append("")
            continue
        if segment == "..":
            if len(output) > 1:
                output.pop()
            if i == len(segments) - 1:
                output.append("")
            continue
        output.append(segment)
    result = "/".join(output)
    if not result.startswith("/"):
        result = "/" + result
    return result

"""Cookie affinity: the L7 path pins a client to a backend with an opaque cookie.

Two pieces:

- :class:`CookieAffinity`, the pool's strategy, used for requests that carry no valid affinity
  cookie or whose pinned backend is unavailable or excluded: it is smooth weighted round robin.
- :class:`AffinityCookie`, used by the L7 data path: it maps a backend to its cookie value and
  back, and formats the ``Set-Cookie`` header value. Values are HMACs, so they reveal nothing about
  backend addresses and every instance sharing ``cookie.secret`` honours every other's cookies.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from lbproxy.balancing.round_robin import RoundRobin

if TYPE_CHECKING:
    from lbproxy.config.model import CookieConfig
    from lbproxy.pool.backend import Backend

VALUE_LENGTH = 16
"""Hex characters kept of the HMAC-SHA256 (64 bits)."""


class CookieAffinity:
    """The ``cookie_affinity`` strategy: smooth weighted round robin for unpinned requests.

    The cookie lookup itself happens in the L7 data path (:class:`AffinityCookie`), which checks
    the pinned backend's ``available`` and the retry ``exclude`` set before using it; ``pick`` is
    only the fallback and ignores ``key``.
    """

    __slots__ = ("_rr",)

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._rr = RoundRobin(backends)

    def update(self, backends: Sequence[Backend]) -> None:
        """Replace the backends."""
        self._rr.update(backends)

    def pick(self, key: str | None, exclude: Collection[Backend] = ()) -> Backend | None:
        """The next backend by smooth weighted round robin, or None."""
        return self._rr.pick(key, exclude)

    def __repr__(self) -> str:
        return f"<CookieAffinity {self._rr!r}>"


class AffinityCookie:
    """Cookie values and ``Set-Cookie`` header values for one pool's affinity cookie.

    The value for a backend is the first ``VALUE_LENGTH`` hex characters of
    ``HMAC-SHA256(key=config.secret, msg=pool_name + "/" + backend.label)``: stable across
    processes and machines for the same secret, pool name and backend address, and different for
    a different secret. Values are computed once per backend label and cached.
    """

    __slots__ = (
        "config",
        "pool_name",
        "_key",
        "_values",
        "_headers",
        "_index_source",
        "_index_len",
        "_index",
    )

    def __init__(self, config: CookieConfig, pool_name: str) -> None:
        self.config = config
        self.pool_name = pool_name
        self._key = config.secret.encode()
        self._values: dict[str, str] = {}
        self._headers: dict[str, bytes] = {}
        self._index_source: Sequence[Backend] | None = None
        self._index_len = -1
        self._index: dict[str, Backend] = {}

    def value_for(self, backend: Backend) -> str:
        """The opaque cookie value naming ``backend`` (16 lowercase hex characters)."""
        label = backend.label
        value = self._values.get(label)
        if value is None:
            msg = f"{self.pool_name}/{label}".encode()
            value = hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:VALUE_LENGTH]
            self._values[label] = value
        return value

    def backend_for(self, value: str, backends: Sequence[Backend]) -> Backend | None:
        """The backend of ``backends`` whose cookie value is ``value``, or None.

        Does not look at availability: the caller checks ``available`` and ``exclude`` and falls
        back to the pool's strategy. The value-to-backend index is rebuilt when ``backends`` is a
        different object (or changed length) from the previous call's, so pass the pool's list.
        """
        if backends is not self._index_source or len(backends) != self._index_len:
            self._index = {self.value_for(b): b for b in backends}
            self._index_source = backends
            self._index_len = len(backends)
        return self._index.get(value)

    def set_cookie_header_value(self, backend: Backend) -> bytes:
        """The ``Set-Cookie`` header value pinning a client to ``backend``.

        ``NAME=VALUE; Path=P; Max-Age=N; HttpOnly; Secure; SameSite=S``, each attribute present
        only when configured (no ``Max-Age`` makes a session cookie). Cached per backend label.
        """
        label = backend.label
        header = self._headers.get(label)
        if header is None:
            c = self.config
            parts = [f"{c.name}={self.value_for(backend)}"]
            if c.path:
                parts.append(f"Path={c.path}")
            if c.max_age is not None:
                parts.append(f"Max-Age={c.max_age}")
            if c.http_only:
                parts.append("HttpOnly")
            if c.secure:
                parts.append("Secure")
            if c.same_site is not None:
                parts.append(f"SameSite={c.same_site}")
            header = "; ".join(parts).encode("latin-1")
            self._headers[label] = header
        return header

    def __repr__(self) -> str:
        return f"<AffinityCookie pool={self.pool_name} name={self.config.name}>"

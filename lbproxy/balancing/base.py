"""The strategy contract shared by L4 and L7.

A strategy chooses one backend of a pool for a new connection (L4) or request (L7). It must:
- return only backends whose ``available`` is true at the time of the call, or ``None`` when there
  is none (never block, never raise for "none available");
- never return a backend in ``exclude`` (the ones a retry already tried), unless told otherwise;
- read ``backend.weight`` at pick time (the admin API changes weights at run time);
- be cheap: ``pick`` is on the hot path. Do no I/O and allocate little.

``update`` is called with the full backend list whenever membership changes (start, reload,
service discovery). Availability changes (health, drain) do NOT call ``update``: ``pick`` skips
unavailable backends itself, which is what lets a consistent hash bring clients back to a backend
when it returns.

A user strategy is any class with this shape; name it in YAML as ``strategy: pkg.module:Class``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from lbproxy.pool.backend import Backend


@runtime_checkable
class Strategy(Protocol):
    """Chooses a backend. Constructed as ``StrategyClass(backends)``."""

    def update(self, backends: Sequence[Backend]) -> None:
        """Replace the set of backends (membership changed)."""

    def pick(self, key: str | None, exclude: Collection[Backend] = ()) -> Backend | None:
        """Choose an available backend not in ``exclude``.

        ``key`` is the affinity key: the client address for ``ip_hash``, or an application
        identity (cookie or header value) for hash-based affinity; strategies that don't hash
        ignore it.
        """

"""Consistent hashing on a ring (ketama-like), keyed by client address or another affinity key."""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Collection, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING

from lbproxy.balancing.round_robin import RoundRobin

if TYPE_CHECKING:
    from lbproxy.pool.backend import Backend

POINTS_PER_UNIT = 160
"""Ring points per unit of weight (weights are first divided by their greatest common divisor)."""

MAX_RING_POINTS = 160 * 256
"""Ring size cap; above it every backend's point count is scaled down proportionally."""

_weight_of = attrgetter("weight")


def _hash32(data: bytes) -> int:
    """A 32-bit hash that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.md5(data, usedforsecurity=False).digest()[:4], "little")


def _backend_points(label: str, count: int) -> list[int]:
    """``count`` ring points for ``label``, ketama style: four 32-bit points per MD5 digest.

    The points for a larger ``count`` extend those for a smaller one, so a weight change only moves
    keys to or from the backend whose weight changed.
    """
    points: list[int] = []
    i = 0
    while len(points) < count:
        digest = hashlib.md5(f"{label}-{i}".encode(), usedforsecurity=False).digest()
        for off in (0, 4, 8, 12):
            points.append(int.from_bytes(digest[off : off + 4], "little"))
        i += 1
    del points[count:]
    return points


class IpHash:
    """Consistent hashing: a key always maps to the same backend while membership is stable.

    The ring holds ``POINTS_PER_UNIT`` points per unit of weight for each backend, derived from an
    MD5 of ``backend.label`` and the point index only, and sorted by (point, label): two instances
    with the same backends build the same ring whatever the backend order, so they map every key
    identically. ``pick(key)`` hashes the key, finds the first point clockwise and walks on to the
    first backend that is ``available`` and not in ``exclude``. Consequences:

    - a backend going unavailable moves only its own keys (to its ring neighbours), and they come
      back when it returns (availability changes never rebuild the ring);
    - removing one of N equal backends (``update``) moves about 1/N of the keys, all of them keys
      of the removed backend; adding one moves about 1/(N+1), all of them to the new one.

    Weights are read at pick time: a changed weight rebuilds the ring on the next pick (an O(n)
    comparison per pick). A backend of weight <= 0 gets no points and is never picked by key.
    A ``None`` key (no client address) falls back to smooth weighted round robin.
    """

    __slots__ = ("_backends", "_weights", "_points", "_owners", "_distinct", "_rr")

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._backends: list[Backend] = []
        self._weights: tuple[int, ...] = ()
        self._points: list[int] = []
        self._owners: list[Backend] = []
        self._distinct = 0
        self._rr = RoundRobin(())
        self.update(backends)

    def update(self, backends: Sequence[Backend]) -> None:
        """Replace the backends and rebuild the ring."""
        self._backends = list(backends)
        self._rr.update(self._backends)
        self._build()

    def _build(self) -> None:
        backends = self._backends
        weights = tuple(map(_weight_of, backends))
        self._weights = weights
        positive = [w for w in weights if w > 0]
        if not positive:
            self._points = []
            self._owners = []
            self._distinct = 0
            return
        unit = math.gcd(*positive)
        total = POINTS_PER_UNIT * sum(positive) // unit
        scale = min(1.0, MAX_RING_POINTS / total)
        entries: list[tuple[int, str, int]] = []
        for index, (b, w) in enumerate(zip(backends, weights)):
            if w <= 0:
                continue
            count = POINTS_PER_UNIT * w // unit
            if scale < 1.0:
                count = max(4, round(count * scale))
            label = b.label
            entries.extend((p, label, index) for p in _backend_points(label, count))
        entries.sort()
        self._points = [e[0] for e in entries]
        self._owners = [backends[e[2]] for e in entries]
        self._distinct = len(positive)

    def pick(self, key: str | None, exclude: Collection[Backend] = ()) -> Backend | None:
        """The backend owning ``key`` on the ring, or the next eligible one clockwise, or None."""
        if key is None:
            return self._rr.pick(None, exclude)
        if tuple(map(_weight_of, self._backends)) != self._weights:
            self._build()
        owners = self._owners
        n = len(owners)
        if n == 0:
            return None
        i = bisect_right(self._points, _hash32(key.encode()))
        if i == n:
            i = 0
        b = owners[i]
        if b.available and b not in exclude:
            return b
        # Slow path: walk clockwise, stopping once every backend on the ring has been seen.
        seen = {b}
        distinct = self._distinct
        for _ in range(n - 1):
            i += 1
            if i == n:
                i = 0
            b = owners[i]
            if b in seen:
                continue
            if b.available and b not in exclude:
                return b
            seen.add(b)
            if len(seen) >= distinct:
                break
        return None

    def __repr__(self) -> str:
        return f"<IpHash backends={len(self._backends)} points={len(self._points)}>"

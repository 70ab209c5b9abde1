"""Least connections, weighted: the backend with the lowest ``active / weight``."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbproxy.pool.backend import Backend


class LeastConnections:
    """Chooses the eligible backend with the lowest ``active / weight``.

    Eligible means ``available``, not in ``exclude`` and weight > 0; weights are read at pick time.
    Loads are compared exactly (``a1 * w2 < a2 * w1``, no floats). Ties, e.g. every backend idle,
    are broken by smooth weighted round robin among the tied backends (as nginx's ``least_conn``
    does): tied backends take turns in proportion to their weights instead of the first one
    always winning. ``pick`` is O(n) (two passes when there is a tie) and allocates nothing.
    """

    __slots__ = ("_backends", "_scores")

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._backends: list[Backend] = []
        self._scores: list[float] = []  # weights are floats during slow start
        self.update(backends)

    def update(self, backends: Sequence[Backend]) -> None:
        """Replace the backends; tie-break scores of surviving backends are kept."""
        old = dict(zip(self._backends, self._scores))
        self._backends = list(backends)
        self._scores = [old.get(b, 0) for b in self._backends]

    def pick(self, key: str | None, exclude: Collection[Backend] = ()) -> Backend | None:
        """The least loaded eligible backend, or None; ``key`` is ignored."""
        backends = self._backends
        best_active = -1
        best_weight: float = 1
        ties = 0
        first: Backend | None = None
        for b in backends:
            if not b.available or b in exclude:
                continue
            w = b.weight
            if w <= 0:
                continue
            a = b.active
            if first is None:
                first = b
                best_active = a
                best_weight = w
                ties = 1
                continue
            lhs = a * best_weight
            rhs = best_active * w
            if lhs < rhs:
                first = b
                best_active = a
                best_weight = w
                ties = 1
            elif lhs == rhs:
                ties += 1
        if ties <= 1:
            return first

        # Smooth weighted round robin among the tied backends.
        scores = self._scores
        total: float = 0
        best = -1
        best_score: float = 0
        for i in range(len(backends)):
            b = backends[i]
            if not b.available or b in exclude:
                continue
            w = b.weight
            if w <= 0 or b.active * best_weight != best_active * w:
                continue
            s = scores[i] + w
            scores[i] = s
            total += w
            if best < 0 or s > best_score:
                best = i
                best_score = s
        if best < 0:  # unreachable unless availability changed between the passes
            return first
        scores[best] = best_score - total
        return backends[best]

    def __repr__(self) -> str:
        return f"<LeastConnections backends={len(self._backends)}>"

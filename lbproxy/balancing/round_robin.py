"""Smooth weighted round robin (nginx's algorithm)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbproxy.pool.backend import Backend


class RoundRobin:
    """Smooth weighted round robin, as nginx's ``upstream`` does it.

    On each pick every eligible backend (``available``, not in ``exclude``, weight > 0) adds its
    current ``weight`` to its score; the highest score wins (first in list order on a tie) and
    has the total of the eligible weights subtracted. Over any window of ``sum(weights)`` picks
    with stable eligibility each backend gets exactly its weight's share, and picks are
    interleaved (weights a=1, b=2 give ``b a b b a b ...``), never long runs of one backend.

    Weights are read at pick time. A backend whose weight is <= 0 is never picked. Scores of
    backends that survive an ``update`` are kept, so membership changes don't restart the cycle.
    ``pick`` is O(n) and allocates nothing.
    """

    __slots__ = ("_backends", "_scores")

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._backends: list[Backend] = []
        self._scores: list[float] = []  # weights are floats during slow start
        self.update(backends)

    def update(self, backends: Sequence[Backend]) -> None:
        """Replace the backends; scores of backends present before and after are kept."""
        old = dict(zip(self._backends, self._scores))
        self._backends = list(backends)
        self._scores = [old.get(b, 0) for b in self._backends]

    def pick(self, key: str | None, exclude: Collection[Backend] = ()) -> Backend | None:
        """The next backend in weighted order among the eligible ones; ``key`` is ignored."""
        scores = self._scores
        total: float = 0.0
        best = -1
        best_score: float = 0.0
        i = -1
        for b in self._backends:
            i += 1
            if not b.available or (exclude and b in exclude):
                continue
            w = b.weight
            if w <= 0:
                continue
            s = scores[i] + w
            scores[i] = s
            total += w
            if best < 0 or s > best_score:
                best = i
                best_score = s
        if best < 0:
            return None
        scores[best] = best_score - total
        return self._backends[best]

    def __repr__(self) -> str:
        return f"<RoundRobin backends={len(self._backends)}>"

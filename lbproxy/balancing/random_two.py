"""Power of two random choices (registered as ``random``)."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lbproxy.pool.backend import Backend


class RandomTwoChoices:
    """Draws two distinct eligible backends uniformly at random and takes the less loaded one.

    Eligible means ``available``, not in ``exclude`` and weight > 0. Load is ``active / weight``
    (weights read at pick time, compared exactly without floats); on a tie the first drawn wins,
    which is itself a uniformly random choice. With one eligible backend it is returned; with none,
    None. The most loaded backend is never chosen while another is eligible, and idle pools spread
    evenly. ``pick`` is O(n) (two passes, no allocation).

    ``rng`` is for tests (a seeded ``random.Random``); by default a private one seeded from the OS.
    """

    __slots__ = ("_backends", "_random")

    def __init__(self, backends: Sequence[Backend], rng: random.Random | None = None) -> None:
        self._backends: list[Backend] = list(backends)
        self._random = (rng if rng is not None else random.Random()).random

    def update(self, backends: Sequence[Backend]) -> None:
        """Replace the backends."""
        self._backends = list(backends)

    def pick(self, key: str | None, exclude: Collection[Backend] = ()) -> Backend | None:
        """The less loaded of two random eligible backends, or None; ``key`` is ignored."""
        backends = self._backends
        count = 0
        only: Backend | None = None
        for b in backends:
            if b.available and b not in exclude and b.weight > 0:
                count += 1
                only = b
        if count <= 1:
            return only
        rand = self._random
        first_index = int(rand() * count)
        second_index = int(rand() * (count - 1))
        if second_index >= first_index:
            second_index += 1
        first: Backend | None = None
        second: Backend | None = None
        index = 0
        for b in backends:
            if b.available and b not in exclude and b.weight > 0:
                if index == first_index:
                    first = b
                    if second is not None:
                        break
                elif index == second_index:
                    second = b
                    if first is not None:
                        break
                index += 1
        if first is None or second is None:  # unreachable unless availability changed mid-pick
            return first or second
        if second.active * first.weight < first.active * second.weight:
            return second
        return first

    def __repr__(self) -> str:
        return f"<RandomTwoChoices backends={len(self._backends)}>"

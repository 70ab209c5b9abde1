"""Rise/fall counting for active health checks: pure, no I/O.

Rules (haproxy's ``rise``/``fall``, counted consecutively):
- Before its first check a backend is up but unconfirmed; the first result decides at once
  (one success confirms it up, one failure takes it down), so a dead backend at start or after a
  reload stops receiving traffic after one check, not after ``fall`` checks.
- Up: each failure counts; a success resets the count; ``fall`` failures in a row take it down.
- Down: each success counts; a failure resets the count; ``rise`` successes in a row bring it up.
- Alternating results never reach either threshold (when rise, fall >= 2): no flapping.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Hysteresis:
    """Consecutive-result counter for one backend."""

    rise: int
    fall: int
    up: bool = True
    confirmed: bool = False
    streak: int = 0  # consecutive results against the current verdict

    def record(self, ok: bool) -> bool | None:
        """Count one check result. Returns the new verdict (True up, False down) when it flips."""
        if not self.confirmed:
            self.confirmed = True
            self.streak = 0
            if ok == self.up:
                return None
            self.up = ok
            return ok
        if ok == self.up:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall):
            self.up = ok
            self.streak = 0
            return ok
        return None

    @property
    def changing(self) -> bool:
        """True while a flip is under way (or unconfirmed): the checker may check faster."""
        return not self.confirmed or self.streak > 0

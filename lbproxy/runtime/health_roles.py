"""Health checkers for the multi-process roles: checks run in one process, verdicts are shared.

With ``workers: N`` the supervisor's view daemon runs the active checks once per backend
(``ReportingHealthChecker``, which reports every up/down verdict so the supervisor can send it
to the workers); each worker keeps passive ejection and slow start for its own traffic but runs
no probes (``PassiveHealthChecker``). So N workers never multiply the probes a backend receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lbproxy.health.checker import HealthChecker, PoolHealth
from lbproxy.pool.backend import Backend
from lbproxy.pool.pool import Pool

OnVerdict = Callable[[str, Backend, str], None]  # (pool name, backend, detail of the deciding check)


class ReportingPoolHealth(PoolHealth):
    """A ``PoolHealth`` that reports each change of a backend's checked-up verdict."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop, on_verdict: OnVerdict) -> None:
        super().__init__(pool, loop)
        self.on_verdict = on_verdict

    def record_check(self, backend: Backend, ok: bool, detail: str) -> None:
        before = backend.checked_up
        super().record_check(backend, ok, detail)
        if backend.checked_up != before:
            self.on_verdict(self.pool.name, backend, detail)


class ReportingHealthChecker(HealthChecker):
    """Active checks as usual, plus ``on_verdict`` whenever a backend goes up or down."""

    def __init__(self, on_verdict: OnVerdict) -> None:
        super().__init__()
        self.on_verdict = on_verdict

    def _new_pool_health(self, pool: Pool) -> PoolHealth:
        return ReportingPoolHealth(pool, asyncio.get_running_loop(), self.on_verdict)


class PassiveHealthChecker(HealthChecker):
    """Passive ejection and slow start only: the verdicts of active checks come from elsewhere."""

    def _start_checks(self, health: PoolHealth, backend: Backend) -> None:
        return None

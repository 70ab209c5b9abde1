"""Health of every pool: active checks, passive ejection (outlier detection) and slow start.

How this works:
- ``HealthChecker`` owns one ``PoolHealth`` per pool. Pools are daemon-wide objects shared by every
  listener that names them, so each backend is checked once, whatever the number of listeners.
- Active checks: one task per checked backend loops probe → ``Hysteresis`` → ``Backend``. The
  first check runs at once; later ones every ``interval`` (half that while a flip is under way),
  with ±15% jitter so many backends don't fire together.
- Passive ejection: ``PoolHealth`` is the backends' ``observer``; the data paths report failures
  and 5xx responses as they happen; enough in a row eject the backend for
  ``base_ejection_time × times ejected`` (capped), never more than ``max_ejection_percent`` of the
  pool at once (at least one). A passing active check brings an ejected backend back early.
- Slow start: a backend that becomes healthy again after being out has its weight ramped
  linearly from 10% to 100% over ``slow_start`` seconds (not at process start).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from lbproxy.config.model import OutlierConfig, PoolConfig
from lbproxy.health.hysteresis import Hysteresis
from lbproxy.health.probes import http_probe, tcp_probe
from lbproxy.net import proxy_protocol
from lbproxy.pool.backend import Backend, BackendState
from lbproxy.pool.pool import Pool
from lbproxy.tls.contexts import upstream_context

log = logging.getLogger("lbproxy.health")

JITTER = 0.15
SLOW_START_STEPS = 20
SLOW_START_FLOOR = 0.1


@dataclass(slots=True)
class BackendHealth:
    """What /status and /metrics show about one backend's checks and ejections."""

    checks_passed: int = 0
    checks_failed: int = 0
    last_result: str = ""  # "passed" | "failed" | "" (never checked)
    last_detail: str = ""
    last_check_time: float = 0.0  # unix time
    times_ejected: int = 0
    ejected_until: float = 0.0  # loop time
    last_unejected: float = 0.0  # loop time
    ejections_total: int = 0
    eject_timer: asyncio.TimerHandle | None = None
    ramp_timer: asyncio.TimerHandle | None = None
    hysteresis: Hysteresis | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class PoolHealth:
    """Health bookkeeping of one pool; also the ``OutcomeObserver`` of its backends."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.config: PoolConfig = pool.config
        self.loop = loop
        self.records: dict[Backend, BackendHealth] = {}
        self.ejections_overflow = 0
        for backend in pool.backends:
            self.adopt(backend)

    # -- membership ------------------------------------------------------------------------------

    def adopt(self, backend: Backend) -> BackendHealth:
        record = self.records.get(backend)
        if record is None:
            record = self.records[backend] = BackendHealth()
            check = self.config.health_check
            if check is not None:
                record.hysteresis = Hysteresis(check.healthy_threshold, check.unhealthy_threshold)
        backend.observer = self
        return record

    def forget(self, backend: Backend) -> None:
        record = self.records.pop(backend, None)
        if record is None:
            return
        for timer in (record.eject_timer, record.ramp_timer):
            if timer is not None:
                timer.cancel()
        if record.task is not None:
            record.task.cancel()
        if backend.observer is self:
            backend.observer = None

    # -- passive ejection (OutcomeObserver) ----------------------------------------------------

    def on_failure(self, backend: Backend) -> None:
        outlier = self.config.outlier_detection
        if outlier is None or not outlier.consecutive_failures:
            return
        if backend.consecutive_failures >= outlier.consecutive_failures:
            self.eject(backend, outlier, f"after {backend.consecutive_failures} consecutive failures")

    def on_5xx(self, backend: Backend) -> None:
        outlier = self.config.outlier_detection
        if outlier is None or not outlier.consecutive_5xx:
            return
        if backend.consecutive_5xx >= outlier.consecutive_5xx:
            self.eject(backend, outlier, f"after {backend.consecutive_5xx} consecutive 5xx responses")

    def eject(self, backend: Backend, outlier: OutlierConfig, reason: str) -> bool:
        """Eject ``backend`` unless it already is, or the pool's ejection cap is reached."""
        if backend.ejected:
            return False
        record = self.records.get(backend)
        if record is None:
            return False
        ejected_now = sum(1 for b in self.pool.backends if b.ejected)
        cap = max(1, len(self.pool.backends) * outlier.max_ejection_percent // 100)
        if ejected_now >= cap:
            self.ejections_overflow += 1
            log.debug("pool %s: not ejecting %s (%s): cap of %d reached", self.pool.name, backend.label, reason, cap)
            return False
        now = self.loop.time()
        if record.last_unejected and now - record.last_unejected > outlier.max_ejection_time:
            record.times_ejected = 0  # it has behaved for a long while: start the multiplier over
        record.times_ejected += 1
        record.ejections_total += 1
        duration = min(outlier.base_ejection_time * record.times_ejected, outlier.max_ejection_time)
        record.ejected_until = now + duration
        record.eject_timer = self.loop.call_later(duration, self.uneject, backend, "ejection time over")
        backend.set_ejected(True, f"for {duration:g}s {reason}")
        return True

    def uneject(self, backend: Backend, reason: str) -> None:
        record = self.records.get(backend)
        if record is None or not backend.ejected:
            return
        if record.eject_timer is not None:
            record.eject_timer.cancel()
            record.eject_timer = None
        record.last_unejected = self.loop.time()
        backend.set_ejected(False, reason)

    # -- slow start ----------------------------------------------------------------------------

    def on_state_change(self, backend: Backend, old: BackendState, new: BackendState) -> None:
        if new is BackendState.HEALTHY and self.config.slow_start > 0:
            self._start_ramp(backend)
        elif new is not BackendState.HEALTHY:
            record = self.records.get(backend)
            if record is not None and record.ramp_timer is not None:
                record.ramp_timer.cancel()
                record.ramp_timer = None
            backend.weight = backend.base_weight

    def _start_ramp(self, backend: Backend) -> None:
        record = self.records.get(backend)
        if record is None:
            return
        if record.ramp_timer is not None:
            record.ramp_timer.cancel()
        self._ramp_step(backend, self.loop.time())

    def _ramp_step(self, backend: Backend, started: float) -> None:
        record = self.records.get(backend)
        if record is None:
            return
        window = self.config.slow_start
        fraction = (self.loop.time() - started) / window
        if fraction >= 1.0:
            backend.weight = backend.base_weight
            record.ramp_timer = None
            return
        backend.weight = backend.base_weight * max(SLOW_START_FLOOR, fraction)
        record.ramp_timer = self.loop.call_later(window / SLOW_START_STEPS, self._ramp_step, backend, started)

    # -- active checks -------------------------------------------------------------------------

    def record_check(self, backend: Backend, ok: bool, detail: str) -> None:
        """Apply one active check result to ``backend``."""
        record = self.records.get(backend)
        if record is None or record.hysteresis is None:
            return
        record.last_result = "passed" if ok else "failed"
        record.last_detail = detail
        record.last_check_time = time.time()
        if ok:
            record.checks_passed += 1
        else:
            record.checks_failed += 1
        hysteresis = record.hysteresis
        first = record.checks_passed + record.checks_failed == 1
        verdict = hysteresis.record(ok)
        if verdict is True:
            count = 1 if first else hysteresis.rise
            backend.set_checked_up(True, f"after {count} passed check{'s' if count > 1 else ''}: {detail}")
        elif verdict is False:
            count = 1 if first else hysteresis.fall
            backend.set_checked_up(False, f"after {count} failed check{'s' if count > 1 else ''}: {detail}")
        if ok and backend.ejected:
            self.uneject(backend, f"active check passed: {detail}")

    def next_delay(self, backend: Backend) -> float:
        check = self.config.health_check
        assert check is not None
        record = self.records.get(backend)
        interval = check.interval
        if record is not None and record.hysteresis is not None and record.hysteresis.changing:
            interval /= 2
        return interval * random.uniform(1 - JITTER, 1 + JITTER)

    async def check_loop(self, backend: Backend) -> None:
        """Check ``backend`` at once, then forever at the pool's interval (until cancelled)."""
        check = self.config.health_check
        assert check is not None
        preamble = self._preamble(backend)
        tls_config = self.config.tls
        tls = None
        if tls_config is not None:  # checks speak TLS like the traffic does
            tls = (upstream_context(tls_config), tls_config.server_name or backend.host)
        while backend in self.records:
            if check.type == "http":
                ok, detail = await http_probe(backend.host, backend.port, check, preamble, tls)
            else:
                ok, detail = await tcp_probe(backend.host, backend.port, check.timeout, preamble, tls)
            self.record_check(backend, ok, detail)
            await asyncio.sleep(self.next_delay(backend))

    def _preamble(self, backend: Backend) -> bytes:
        """A backend that expects a PROXY header gets a LOCAL one (v2) or UNKNOWN (v1)."""
        version = backend.config.proxy_protocol or self.config.proxy_protocol
        if version == "v2":
            return proxy_protocol.V2_SIGNATURE + b"\x20\x00\x00\x00"
        if version == "v1":
            return b"PROXY UNKNOWN\r\n"
        return b""


class HealthChecker:
    """Owns the health of every pool of a daemon, and the active-check tasks."""

    def __init__(self) -> None:
        self.pools: dict[str, PoolHealth] = {}

    def start(self, pools: Iterable[Pool]) -> None:
        for pool in pools:
            self.add_pool(pool)

    def add_pool(self, pool: Pool) -> None:
        """Watch a pool: its backends are checked at once when it has a health check."""
        health = self._new_pool_health(pool)
        self.pools[pool.name] = health
        if pool.config.health_check is not None:
            for backend in pool.backends:
                self._start_checks(health, backend)

    def _new_pool_health(self, pool: Pool) -> PoolHealth:
        """The bookkeeping object for one pool (subclasses report verdicts elsewhere)."""
        return PoolHealth(pool, asyncio.get_running_loop())

    def remove_pool(self, pool: Pool) -> None:
        health = self.pools.pop(pool.name, None)
        if health is not None:
            for backend in list(health.records):
                health.forget(backend)

    def remove_backend(self, pool: Pool, backend: Backend) -> None:
        health = self.pools.get(pool.name)
        if health is not None:
            health.forget(backend)

    def reconfigure_pool(self, pool: Pool, old: PoolConfig, added: Iterable[Backend]) -> None:
        """After ``pool.reconfigure``: adopt new backends and follow health-check changes.

        Backends that stayed keep their verdict; a changed health check restarts their probes
        (with the new thresholds, keeping the current up/down verdict).
        """
        health = self.pools.get(pool.name)
        if health is None:
            self.add_pool(pool)
            return
        health.config = pool.config
        check = pool.config.health_check
        restart = check != old.health_check
        for backend in list(health.records):
            if restart:
                record = health.records[backend]
                if record.task is not None:
                    record.task.cancel()
                    record.task = None
                if check is None:
                    record.hysteresis = None
                    backend.set_checked_up(True, "health check removed by reload")
                else:
                    record.hysteresis = Hysteresis(
                        check.healthy_threshold, check.unhealthy_threshold, up=backend.checked_up, confirmed=True
                    )
                    self._start_checks(health, backend)
        for backend in added:
            health.adopt(backend)
            if check is not None:
                self._start_checks(health, backend)

    def _start_checks(self, health: PoolHealth, backend: Backend) -> None:
        record = health.records[backend]
        task = asyncio.get_running_loop().create_task(health.check_loop(backend))
        task.add_done_callback(_report_crash)
        record.task = task

    async def stop(self) -> None:
        tasks = []
        for health in self.pools.values():
            for backend in list(health.records):
                record = health.records[backend]
                if record.task is not None:
                    tasks.append(record.task)
                health.forget(backend)
        self.pools.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("health check loop crashed", exc_info=task.exception())

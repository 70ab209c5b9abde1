"""Backend: one upstream server's runtime state, shared by strategies, data paths and health checks.

Rules:
- Three independent inputs decide whether a backend takes new work: the active health check
  (``checked_up``), passive outlier detection (``ejected``) and the operator (``admin``: ready,
  draining or disabled). They change only through ``set_checked_up``, ``set_ejected`` and
  ``set_admin``, which recompute the cached ``eligible`` flag and log a change of the derived
  ``state`` once at INFO, with the reason.
- ``state`` is derived, by precedence: disabled > draining > unhealthy > ejected > healthy.
- ``active`` counts live L4 connections plus L7 requests in flight; the data paths increment it
  with ``acquire`` and decrement it with ``release``, exactly once each.
- ``available`` is what a strategy asks on the hot path: eligible and under ``max_connections``.
  It is a plain attribute kept up to date by ``acquire``, ``release``, the state inputs and
  ``set_max_connections`` (a property cost a call per backend per pick: issue 8).
"""

from __future__ import annotations

import enum
import logging
from typing import Literal, Protocol

from lbproxy.config.model import BackendConfig

log = logging.getLogger("lbproxy.pool")

AdminState = Literal["ready", "draining", "disabled"]


class OutcomeObserver(Protocol):
    """Told about outcomes and state changes as they happen (passive health, slow start)."""

    def on_failure(self, backend: Backend) -> None: ...

    def on_5xx(self, backend: Backend) -> None: ...

    def on_state_change(self, backend: Backend, old: BackendState, new: BackendState) -> None: ...


class BackendState(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # failing active checks
    EJECTED = "ejected"  # passive outlier detection
    DRAINING = "draining"  # admin: no new work, existing work finishes
    DISABLED = "disabled"  # admin: out of rotation (maintenance)


_STATE_WORDS = {
    BackendState.HEALTHY: "UP",
    BackendState.UNHEALTHY: "DOWN",
    BackendState.EJECTED: "EJECTED",
    BackendState.DRAINING: "DRAINING",
    BackendState.DISABLED: "DISABLED",
}


class Backend:
    """One upstream server of one pool."""

    __slots__ = (
        "config",
        "pool_name",
        "host",
        "port",
        "label",
        "weight",
        "base_weight",
        "max_connections",
        "checked_up",
        "ejected",
        "admin",
        "eligible",
        "available",
        "state",
        "active",
        "connections_total",
        "failures_total",
        "consecutive_failures",
        "consecutive_5xx",
        "observer",
        "transitions",
        "errors",
        "responses_5xx",
    )

    def __init__(self, config: BackendConfig, pool_name: str) -> None:
        self.config = config
        self.pool_name = pool_name
        self.host = config.address.host
        self.port = config.address.port
        # A stable id: the configured address. Hashing (ip_hash, cookies) keys on it, so two
        # instances with the same config agree.
        self.label = str(config.address)
        # The weight strategies read: the int configured, a float while slow start scales it (the
        # union, not float, because the compiled build stores a float as a C double).
        self.weight: int | float = config.weight
        self.base_weight = config.weight  # the configured or admin-set weight
        self.max_connections = config.max_connections
        self.checked_up = True
        self.ejected = False
        self.admin: AdminState = "ready"
        self.eligible = True
        self.active = 0
        self.available = self.max_connections is None or self.max_connections > 0
        self.state = BackendState.HEALTHY
        self.connections_total = 0
        self.failures_total = 0
        self.consecutive_failures = 0
        self.consecutive_5xx = 0
        # Passive health (outlier detection) watches these outcomes; None when not configured.
        self.observer: OutcomeObserver | None = None
        self.transitions: dict[str, int] = {}  # state value -> times entered
        self.errors: dict[str, int] = {}  # UpstreamError.kind -> count
        self.responses_5xx = 0

    def _update_available(self) -> None:
        """Recompute ``available``: True when a strategy may give this backend one more
        connection or request (eligible and under ``max_connections``)."""
        limit = self.max_connections
        self.available = self.eligible and (limit is None or self.active < limit)

    def acquire(self) -> None:
        """Count one connection or request starting on this backend."""
        self.active = active = self.active + 1
        self.connections_total += 1
        limit = self.max_connections
        if limit is not None and active >= limit:
            self.available = False

    def release(self) -> None:
        """Count one connection or request finished; call exactly once per ``acquire``."""
        self.active -= 1
        if not self.available and self.eligible:
            self._update_available()

    def set_max_connections(self, limit: int | None) -> None:
        """Apply a new ``max_connections`` (reload)."""
        self.max_connections = limit
        self._update_available()

    # -- outcomes from the data paths ------------------------------------------------------------

    def note_failure(self, kind: str = "connect_refused") -> None:
        """A connect failure, reset or timeout on this backend (L4 or L7); ``kind`` as in errors.py."""
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.failures_total += 1
        self.consecutive_failures += 1
        if self.observer is not None:
            self.observer.on_failure(self)

    def note_success(self) -> None:
        """A connection (L4) or response (L7) succeeded: clears the consecutive-failure count."""
        self.consecutive_failures = 0

    def note_error(self, kind: str) -> None:
        """An error that is not a connection failure (a malformed response): counted only."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def note_status(self, status: int) -> None:
        """An L7 response status from this backend (5xx counts toward outlier ejection)."""
        self.consecutive_failures = 0
        if status >= 500:
            self.responses_5xx += 1
            self.consecutive_5xx += 1
            if self.observer is not None:
                self.observer.on_5xx(self)
        else:
            self.consecutive_5xx = 0

    # -- state inputs ----------------------------------------------------------------------------

    def set_checked_up(self, up: bool, reason: str) -> bool:
        """The active health check's verdict. Returns whether the derived state changed."""
        self.checked_up = up
        return self._refresh(reason)

    def set_ejected(self, ejected: bool, reason: str) -> bool:
        """Passive outlier detection's verdict. Returns whether the derived state changed."""
        self.ejected = ejected
        if not ejected:
            self.consecutive_failures = 0
            self.consecutive_5xx = 0
        return self._refresh(reason)

    def set_admin(self, admin: AdminState, reason: str) -> bool:
        """The operator's choice. Returns whether the derived state changed."""
        self.admin = admin
        return self._refresh(reason)

    def _refresh(self, reason: str) -> bool:
        if self.admin == "disabled":
            state = BackendState.DISABLED
        elif self.admin == "draining":
            state = BackendState.DRAINING
        elif not self.checked_up:
            state = BackendState.UNHEALTHY
        elif self.ejected:
            state = BackendState.EJECTED
        else:
            state = BackendState.HEALTHY
        self.eligible = state is BackendState.HEALTHY
        self._update_available()
        if state is self.state:
            return False
        log.info("pool %s backend %s %s %s", self.pool_name, self.label, _STATE_WORDS[state], reason)
        old = self.state
        self.state = state
        self.transitions[state.value] = self.transitions.get(state.value, 0) + 1
        if self.observer is not None:
            self.observer.on_state_change(self, old, state)
        return True

    def force_state(self, state: BackendState) -> None:
        """Set the inputs so that ``state`` results (tests and tools; not for the data path)."""
        self.admin = "disabled" if state is BackendState.DISABLED else (
            "draining" if state is BackendState.DRAINING else "ready"
        )
        self.checked_up = state is not BackendState.UNHEALTHY
        self.ejected = state is BackendState.EJECTED
        self._refresh("forced")

    def __repr__(self) -> str:
        return (
            f"<Backend {self.pool_name}/{self.label} {self.state.value} "
            f"weight={self.weight} active={self.active}>"
        )

"""Backend: one upstream server's runtime state, shared by strategies, data paths and health checks.

Rules:
- ``state`` is changed only by ``set_state`` (health checker, outlier detector, admin API).
- ``active`` counts live L4 connections plus L7 requests in flight; the data paths increment it on
  ``acquire`` and decrement on ``release``, exactly once each.
- ``available`` is what a strategy asks: the backend may take one more connection or request now.
"""

from __future__ import annotations

import enum
import logging
from typing import Protocol

from lbproxy.config.model import BackendConfig

log = logging.getLogger("lbproxy.pool")


class OutcomeObserver(Protocol):
    """Told about failures as they happen (passive health checking)."""

    def on_failure(self, backend: Backend) -> None: ...

    def on_5xx(self, backend: Backend) -> None: ...


class BackendState(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # failing active checks
    EJECTED = "ejected"  # passive outlier detection
    DRAINING = "draining"  # admin: no new work, existing work finishes
    DISABLED = "disabled"  # admin: out of rotation (maintenance)


class Backend:
    """One upstream server of one pool."""

    __slots__ = (
        "config",
        "pool_name",
        "host",
        "port",
        "label",
        "weight",
        "max_connections",
        "state",
        "active",
        "connections_total",
        "failures_total",
        "consecutive_failures",
        "consecutive_5xx",
        "observer",
    )

    def __init__(self, config: BackendConfig, pool_name: str) -> None:
        self.config = config
        self.pool_name = pool_name
        self.host = config.address.host
        self.port = config.address.port
        # A stable id: the configured address. Hashing (ip_hash, cookies) keys on it, so two
        # instances with the same config agree.
        self.label = str(config.address)
        self.weight = config.weight
        self.max_connections = config.max_connections
        self.state = BackendState.HEALTHY
        self.active = 0
        self.connections_total = 0
        self.failures_total = 0
        self.consecutive_failures = 0
        self.consecutive_5xx = 0
        # Passive health (outlier detection) watches these outcomes; None when not configured.
        self.observer: OutcomeObserver | None = None

    @property
    def available(self) -> bool:
        """True when a strategy may give this backend one more connection or request."""
        if self.state is not BackendState.HEALTHY:
            return False
        limit = self.max_connections
        return limit is None or self.active < limit

    def acquire(self) -> None:
        """Count one connection or request starting on this backend."""
        self.active += 1
        self.connections_total += 1

    def release(self) -> None:
        """Count one connection or request finished; call exactly once per ``acquire``."""
        self.active -= 1

    def note_failure(self) -> None:
        """A connect failure, reset or timeout on this backend (L4 or L7)."""
        self.failures_total += 1
        self.consecutive_failures += 1
        if self.observer is not None:
            self.observer.on_failure(self)

    def note_success(self) -> None:
        """A connection (L4) or response (L7) succeeded: clears the consecutive-failure count."""
        self.consecutive_failures = 0

    def note_status(self, status: int) -> None:
        """An L7 response status from this backend (5xx counts toward outlier ejection)."""
        self.consecutive_failures = 0
        if status >= 500:
            self.consecutive_5xx += 1
            if self.observer is not None:
                self.observer.on_5xx(self)
        else:
            self.consecutive_5xx = 0

    def set_state(self, state: BackendState, reason: str) -> bool:
        """Move to ``state``; logs the transition once at INFO. Returns whether it changed."""
        if state is self.state:
            return False
        log.info(
            "pool %s backend %s %s -> %s: %s",
            self.pool_name,
            self.label,
            self.state.value,
            state.value,
            reason,
        )
        self.state = state
        return True

    def __repr__(self) -> str:
        return (
            f"<Backend {self.pool_name}/{self.label} {self.state.value} "
            f"weight={self.weight} active={self.active}>"
        )

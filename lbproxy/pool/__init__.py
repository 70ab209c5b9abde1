"""Backends and pools: the state both tiers and the health checker share."""

from __future__ import annotations

from lbproxy.pool.backend import Backend, BackendState
from lbproxy.pool.pool import Pool

__all__ = ["Backend", "BackendState", "Pool"]

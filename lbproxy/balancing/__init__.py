"""Load-balancing strategies: how a pool chooses a backend for a connection or request.

Builtins (``round_robin``, ``least_connections``, ``ip_hash``, ``random``, ``cookie_affinity``) and
user classes named ``package.module:Class`` are resolved by :mod:`lbproxy.balancing.registry`;
every strategy follows the contract in :mod:`lbproxy.balancing.base`.
"""

from __future__ import annotations

from lbproxy.balancing.base import Strategy
from lbproxy.balancing.registry import create_strategy, resolve_strategy_class

__all__ = ["Strategy", "create_strategy", "resolve_strategy_class"]

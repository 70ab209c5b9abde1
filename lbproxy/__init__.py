"""lbproxy: an L4/L7 load balancer daemon on asyncio, uvloop and httptools."""

from __future__ import annotations

__version__ = "0.1.0"

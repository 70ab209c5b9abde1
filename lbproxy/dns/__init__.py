"""A health-aware authoritative DNS listener: DNS round robin that never hands out a dead server."""

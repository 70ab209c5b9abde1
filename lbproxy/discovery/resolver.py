"""DNS discovery: look up the ``dns`` backends of each pool every ``resolve_interval``.

How this works:
- ``lookup`` asks for A and AAAA records with dnspython, against the pool's ``resolvers`` (any
  IP and port) or the system's (``/etc/resolv.conf``; ``/etc/hosts`` is not consulted). Each
  lookup is bounded by its own timeout.
- ``PoolDiscovery`` keeps, per entry and record type, the last good set of addresses. A query
  that fails (timeout, SERVFAIL, REFUSED, no resolver) keeps the last good set of its type; a
  lookup that finds nothing at all (NXDOMAIN, or no A and no AAAA records) keeps the last good
  set of the entry. Either logs a warning saying so and counts ``failures_total``
  (``lbproxy_discovery_failures_total``): a DNS hiccup never empties a pool. A type that answers
  with no records (while the other has some) is a real change: those addresses are gone.
- ``Discovery`` owns one task per pool with dns entries. Each task sleeps ``resolve_interval``,
  refreshes, and when the set of backends changed calls ``on_change(pool, backends)``; the
  daemon then reconciles the pool exactly as a reload does (removed backends drain, new ones
  are health-checked before use). Nothing here runs on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from lbproxy.config.model import Address, BackendConfig, PoolConfig
from lbproxy.discovery.members import (
    EntryKey,
    discovered_backends,
    entry_key,
    sort_addresses,
)

log = logging.getLogger("lbproxy.discovery")

MAX_LOOKUP_TIMEOUT = 5.0
MIN_LOOKUP_TIMEOUT = 1.0

OnChange = Callable[[str, tuple[BackendConfig, ...]], None]


class DiscoveryError(Exception):
    """A lookup failed (the message says why, for logs and /status)."""


RECORD_TYPES = ("A", "AAAA")


@dataclass(frozen=True, slots=True)
class LookupResult:
    """The answer for one record type, or why there is none."""

    addresses: tuple[str, ...] = ()  # IP literals, sorted; empty for NXDOMAIN or no records
    ttl: int | None = None  # of the answer; None when there was none
    error: str = ""  # "" when the query was answered (even with nothing)


Lookup = Callable[[str, tuple[Address, ...], float], Awaitable[dict[str, LookupResult]]]


def lookup_timeout(resolve_interval: float) -> float:
    """How long one lookup may take: the interval, kept between 1 s and 5 s."""
    return max(MIN_LOOKUP_TIMEOUT, min(MAX_LOOKUP_TIMEOUT, resolve_interval))


async def lookup(name: str, resolvers: tuple[Address, ...], timeout: float) -> dict[str, LookupResult]:
    """The A and AAAA records of ``name``, one ``LookupResult`` per type (never raises).

    NXDOMAIN and "no records of this type" are answers (empty), not errors.
    """
    try:
        resolver = dns.asyncresolver.Resolver(configure=not resolvers)
    except dns.exception.DNSException as exc:  # no /etc/resolv.conf, or nothing in it
        failed = LookupResult(error=f"no system resolver: {exc}")
        return {rdtype: failed for rdtype in RECORD_TYPES}
    if resolvers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(a.host, a.port) for a in resolvers]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return {rdtype: await _query(resolver, name, rdtype, timeout) for rdtype in RECORD_TYPES}


async def _query(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str, timeout: float) -> LookupResult:
    try:
        async with asyncio.timeout(timeout + 1.0):
            answer = await resolver.resolve(name, rdtype, search=True, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return LookupResult()
    except (TimeoutError, dns.exception.Timeout):
        return LookupResult(error=f"{rdtype} lookup timed out after {timeout:g}s")
    except dns.resolver.NoNameservers as exc:
        return LookupResult(error=f"{rdtype} lookup failed: {exc}")
    except (dns.exception.DNSException, OSError) as exc:
        return LookupResult(error=f"{rdtype} lookup failed: {type(exc).__name__}: {exc}")
    if answer.rrset is None:
        return LookupResult()
    return LookupResult(sort_addresses(r.address for r in answer.rrset), answer.rrset.ttl)


@dataclass(slots=True)
class EntryState:
    """What is known about one ``dns`` entry: its last good addresses and the last attempt."""

    addresses: tuple[str, ...] = ()  # in use: the union of by_type
    by_type: dict[str, tuple[str, ...]] = field(default_factory=dict)  # last good, per record type
    ttl: int | None = None
    resolved_at: float = 0.0  # unix time of the last good lookup; 0: never
    error: str = ""  # why the last lookup did not replace the set; "" when it did


class PoolDiscovery:
    """The dns entries of one pool and what they resolved to."""

    def __init__(self, config: PoolConfig, lookup: Lookup = lookup) -> None:
        self.name = config.name
        self.config = config
        self.lookup = lookup
        self.entries: dict[EntryKey, EntryState] = {entry_key(e): EntryState() for e in config.dns_backends}
        self.failures_total = 0

    def reconfigure(self, config: PoolConfig) -> None:
        """Follow a reload: entries that stay keep their addresses; new ones start empty."""
        self.config = config
        self.entries = {entry_key(e): self.entries.get(entry_key(e), EntryState()) for e in config.dns_backends}

    def backends(self) -> tuple[BackendConfig, ...]:
        """The backends the last good lookups stand for."""
        return discovered_backends(self.config, {key: state.addresses for key, state in self.entries.items()})

    async def refresh(self) -> bool:
        """Look every entry up once. Returns True when the set of backends changed."""
        before = self.backends()
        timeout = lookup_timeout(self.config.resolve_interval)
        for (name, port), state in list(self.entries.items()):
            label = f"{name}:{port}"
            results = await self.lookup(name, self.config.resolvers, timeout)
            errors = [r.error for r in results.values() if r.error]
            if len(errors) == len(results):
                self._keep(state, label, "; ".join(errors))
                continue
            by_type = dict(state.by_type)
            by_type.update({t: r.addresses for t, r in results.items() if not r.error})
            addresses = sort_addresses(a for found in by_type.values() for a in found)
            if not addresses:
                self._keep(state, label, "no A/AAAA records" + (f" ({'; '.join(errors)})" if errors else ""))
                continue
            if addresses != state.addresses:
                log.info(
                    "discovery: pool %s: %s -> %s (was %s)",
                    self.name, label, ", ".join(addresses), ", ".join(state.addresses) or "nothing",
                )  # fmt: skip
            state.addresses = addresses
            state.by_type = by_type
            ttls = [r.ttl for r in results.values() if r.ttl is not None]
            state.ttl = min(ttls) if ttls else None
            state.resolved_at = time.time()
            state.error = "; ".join(errors)
            if errors:  # one type failed: its last good addresses were kept
                self._keep(state, label, state.error)
        return self.backends() != before

    def _keep(self, state: EntryState, label: str, why: str) -> None:
        """Count and log a lookup that did not (fully) replace the set."""
        self.failures_total += 1
        state.error = why
        if state.addresses:
            log.warning(
                "discovery: pool %s: %s: %s; keeping the last good set (%s)",
                self.name, label, why, ", ".join(state.addresses),
            )  # fmt: skip
        else:
            log.warning("discovery: pool %s: %s: %s; no addresses known yet", self.name, label, why)

    def status(self) -> dict[str, object]:
        """The /status view: per entry, the addresses in use and the last lookup's outcome."""
        return {
            "resolve_interval": self.config.resolve_interval,
            "resolvers": [str(a) for a in self.config.resolvers] or "system",
            "failures_total": self.failures_total,
            "dns": [
                {
                    "name": f"{name}:{port}",
                    "addresses": list(state.addresses),
                    "ttl": state.ttl,
                    "resolved_at": state.resolved_at or None,
                    "error": state.error or None,
                }
                for (name, port), state in self.entries.items()
            ],
        }


class Discovery:
    """Owns the lookup loops of every pool that has dns entries."""

    def __init__(self, on_change: OnChange, lookup: Lookup = lookup) -> None:
        self.on_change = on_change
        self.lookup = lookup
        self.pools: dict[str, PoolDiscovery] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self, pools: Mapping[str, PoolConfig]) -> None:
        """Resolve every pool once (concurrently, each lookup bounded), then keep resolving."""
        for config in pools.values():
            if config.dns_backends:
                self.pools[config.name] = PoolDiscovery(config, self.lookup)
        await asyncio.gather(*(p.refresh() for p in self.pools.values()))
        for name in self.pools:
            self._start_loop(name)

    def backends(self, pool: str) -> tuple[BackendConfig, ...]:
        """The discovered backends of ``pool`` (empty when it has no dns entries)."""
        discovery = self.pools.get(pool)
        return discovery.backends() if discovery is not None else ()

    def reconfigure(self, pools: Mapping[str, PoolConfig]) -> None:
        """Follow a reload. A pool whose dns entries, interval or resolvers changed is looked up
        again at once; addresses already known for entries that stay are kept meanwhile."""
        for name in [n for n in self.pools if n not in pools or not pools[n].dns_backends]:
            self._stop_loop(name)
            del self.pools[name]
        for name, config in pools.items():
            if not config.dns_backends:
                continue
            existing = self.pools.get(name)
            if existing is None:
                self.pools[name] = PoolDiscovery(config, self.lookup)
                self._start_loop(name, at_once=True)
                continue
            old = existing.config
            existing.reconfigure(config)
            if (old.dns_backends, old.resolve_interval, old.resolvers) != (
                config.dns_backends, config.resolve_interval, config.resolvers,
            ):  # fmt: skip
                self._stop_loop(name)
                self._start_loop(name, at_once=True)

    def _start_loop(self, name: str, at_once: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(self._loop(name, at_once), name=f"discovery {name}")
        task.add_done_callback(_report_crash)
        self._tasks[name] = task

    def _stop_loop(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def _loop(self, name: str, at_once: bool) -> None:
        discovery = self.pools[name]
        if not at_once:
            await asyncio.sleep(discovery.config.resolve_interval)
        while True:
            if await discovery.refresh():
                self.on_change(name, discovery.backends())
            await asyncio.sleep(discovery.config.resolve_interval)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("discovery loop crashed", exc_info=task.exception())

"""Turning looked-up addresses into backends: pure functions, no I/O.

Rules:
- Each address found for a ``dns`` entry becomes one ``BackendConfig`` on the entry's port, with
  the entry's weight, max_connections and proxy_protocol. Its label is ``IP:PORT``
  (``[IPv6]:PORT``), so a backend keeps its identity (health state, counters, affinity) across
  lookups for as long as the address stays in DNS.
- Order is stable: entries in config order, addresses sorted (IPv4 before IPv6, numerically).
- An address that is already a backend of the pool (a static one, or found by an earlier entry)
  is not added twice: the first one wins.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping

from lbproxy.config.model import Address, BackendConfig, DnsBackendConfig, PoolConfig

EntryKey = tuple[str, int]  # (name, port) of a dns entry


def entry_key(entry: DnsBackendConfig) -> EntryKey:
    return (entry.name, entry.port)


def sort_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """IP literals, deduplicated, IPv4 first, numerically. Non-IP strings are a bug (ValueError)."""
    ips = {ipaddress.ip_address(a) for a in addresses}
    return tuple(str(ip) for ip in sorted(ips, key=lambda ip: (ip.version, int(ip))))


def discovered_backends(
    pool: PoolConfig, resolved: Mapping[EntryKey, tuple[str, ...]]
) -> tuple[BackendConfig, ...]:
    """The backends the pool's dns entries stand for, given the addresses found per entry."""
    seen = {b.address for b in pool.backends}
    out: list[BackendConfig] = []
    for entry in pool.dns_backends:
        for host in resolved.get(entry_key(entry), ()):
            address = Address(host, entry.port)
            if address in seen:
                continue
            seen.add(address)
            out.append(
                BackendConfig(
                    address=address,
                    weight=entry.weight,
                    max_connections=entry.max_connections,
                    proxy_protocol=entry.proxy_protocol,
                )
            )
    return tuple(out)


def effective_pool_config(pool: PoolConfig, discovered: tuple[BackendConfig, ...]) -> PoolConfig:
    """``pool`` with the discovered backends after its static ones (what a ``Pool`` is built from)."""
    if not discovered:
        return pool
    static = {b.address for b in pool.backends}
    extra = tuple(b for b in discovered if b.address not in static)
    return dataclasses.replace(pool, backends=pool.backends + extra)


def to_wire(backends: Iterable[BackendConfig]) -> list[dict[str, object]]:
    """JSON-able form of discovered backends (sent from the supervisor to workers)."""
    return [
        {
            "host": b.address.host,
            "port": b.address.port,
            "weight": b.weight,
            "max_connections": b.max_connections,
            "proxy_protocol": b.proxy_protocol,
        }
        for b in backends
    ]


def from_wire(items: Iterable[Mapping[str, object]]) -> tuple[BackendConfig, ...]:
    """The inverse of ``to_wire``."""
    return tuple(
        BackendConfig(
            address=Address(str(item["host"]), int(item["port"])),  # type: ignore[call-overload]
            weight=int(item["weight"]),  # type: ignore[call-overload]
            max_connections=None if item.get("max_connections") is None else int(item["max_connections"]),  # type: ignore[call-overload]
            proxy_protocol=item.get("proxy_protocol"),  # type: ignore[arg-type]
        )
        for item in items
    )

"""Prometheus exposition: one custom collector reading the daemon's plain counters at scrape time.

Nothing here runs on the data path: listeners and backends keep ints and ``lbproxy.stats``
histograms; this module turns them into metric families when ``/metrics`` is scraped, in two
steps: ``snapshot(daemon)`` copies the numbers into a JSON-able dict, and ``families(snapshot)``
builds the families from it. With ``workers: N`` the supervisor asks each worker for its
snapshot, merges them (``lbproxy.runtime.merge``) and renders the merge the same way.
Label values are bounded: listener, route, pool and backend names come from the config, ``code``
is an HTTP status; never a path or a client address.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lbproxy import __version__
from lbproxy.build import build_name
from lbproxy.l7.listener import HttpListener
from lbproxy.pool.backend import BackendState

if TYPE_CHECKING:
    from lbproxy.runtime.daemon import Daemon

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUILD = build_name()  # which build this process runs; fixed once imported


Snapshot = dict[str, Any]


def snapshot(daemon: Daemon) -> Snapshot:
    """Every number /metrics shows, copied from a running daemon (JSON-able; read-only)."""
    listeners: list[dict[str, Any]] = []
    for listener in daemon.listeners.values():
        stats = listener.stats
        item: dict[str, Any] = {
            "name": listener.name,
            "connections_total": stats.connections_total,
            "connections_active": len(listener.connections),
            "rejected_total": stats.rejected_total,
            "bytes_in": stats.bytes_in,
            "bytes_out": stats.bytes_out,
            "tls_handshake_failures": listener.tls.handshake_failures if listener.tls is not None else None,
            "requests": [],
            "durations": [],
        }
        if isinstance(listener, HttpListener):
            item["requests"] = [
                [route, pool, backend, code, count]
                for (route, pool, backend, code), count in list(listener.tally.counts.items())
            ]
            item["durations"] = [
                [pool, histogram.cumulative(), histogram.total] for pool, histogram in list(listener.tally.durations.items())
            ]
        listeners.append(item)
    pools: list[dict[str, Any]] = []
    for pool in daemon.pools.values():
        health = daemon.health.pools.get(pool.name)
        backends: list[dict[str, Any]] = []
        for backend in pool.backends:
            record = health.records.get(backend) if health is not None else None
            backends.append(
                {
                    "label": backend.label,
                    "state": backend.state.value,
                    "active": backend.active,
                    "weight": backend.weight,
                    "errors": dict(backend.errors),
                    "transitions": dict(backend.transitions),
                    "record": record is not None,
                    "checks_passed": record.checks_passed if record is not None else 0,
                    "checks_failed": record.checks_failed if record is not None else 0,
                    "ejections_total": record.ejections_total if record is not None else 0,
                }
            )
        discovery = daemon.discovery.pools.get(pool.name) if daemon.discovery is not None else None
        pools.append(
            {
                "name": pool.name,
                "no_backend_total": pool.no_backend_total,
                "retries_total": pool.retries_total,
                "connect": [pool.connect_durations.cumulative(), pool.connect_durations.total],
                "health_check": pool.config.health_check is not None,
                "discovery_failures": discovery.failures_total if discovery is not None else None,
                "backends": backends,
            }
        )
    return {
        "reloads": dict(daemon.reloads),
        "last_reload_success": daemon.last_reload_success,
        "listeners": listeners,
        "pools": pools,
    }


def families(snap: Snapshot) -> Iterator[Metric]:
    """The lbproxy metric families for a snapshot (of one daemon, or merged over workers)."""
    info = GaugeMetricFamily(
        "lbproxy_build_info", "lbproxy version, Python, and build (python, or mypyc: compiled)",
        labels=["version", "python", "build"],
    )
    info.add_metric([__version__, platform.python_version(), BUILD], 1)
    yield info
    reloads = CounterMetricFamily("lbproxy_config_reloads", "Configuration reloads", labels=["result"])
    for result, count in snap["reloads"].items():
        reloads.add_metric([result], count)
    yield reloads
    yield GaugeMetricFamily(
        "lbproxy_config_last_reload_success_timestamp_seconds",
        "When the running configuration was loaded (start or last successful reload)",
        value=snap["last_reload_success"],
    )

    conn_total = CounterMetricFamily("lbproxy_connections", "Client connections accepted", labels=["listener"])
    conn_active = GaugeMetricFamily("lbproxy_connections_active", "Client connections open", labels=["listener"])
    conn_rejected = CounterMetricFamily(
        "lbproxy_connections_rejected", "Client connections refused (limit or shutdown)", labels=["listener"]
    )
    bytes_total = CounterMetricFamily(
        "lbproxy_bytes", "Bytes from clients (in) and to clients (out)", labels=["listener", "direction"]
    )
    requests = CounterMetricFamily(
        "lbproxy_requests", "HTTP requests answered", labels=["listener", "route", "pool", "backend", "code"]
    )
    durations = HistogramMetricFamily(
        "lbproxy_request_duration_seconds",
        "HTTP request duration, to the last byte of the response",
        labels=["listener", "pool"],
    )
    for listener in snap["listeners"]:
        name = listener["name"]
        conn_total.add_metric([name], listener["connections_total"])
        conn_active.add_metric([name], listener["connections_active"])
        conn_rejected.add_metric([name], listener["rejected_total"])
        bytes_total.add_metric([name, "in"], listener["bytes_in"])
        bytes_total.add_metric([name, "out"], listener["bytes_out"])
        for route, pool, backend, code, count in listener["requests"]:
            requests.add_metric([name, route, pool, backend, str(code)], count)
        for pool, buckets, total in listener["durations"]:
            durations.add_metric([name, pool], buckets, total)
    yield from (conn_total, conn_active, conn_rejected, bytes_total, requests, durations)
    tls_failures = CounterMetricFamily(
        "lbproxy_tls_handshake_failures", "TLS handshakes that failed on a listener that terminates TLS",
        labels=["listener"],
    )  # fmt: skip
    for listener in snap["listeners"]:
        if listener.get("tls_handshake_failures") is not None:
            tls_failures.add_metric([listener["name"]], listener["tls_handshake_failures"])
    yield tls_failures

    up = GaugeMetricFamily("lbproxy_backend_up", "1 when the backend takes new work", labels=["pool", "backend"])
    state = GaugeMetricFamily(
        "lbproxy_backend_state", "1 for the backend's current state", labels=["pool", "backend", "state"]
    )
    active = GaugeMetricFamily(
        "lbproxy_backend_active_connections",
        "Live L4 connections and L7 requests in flight",
        labels=["pool", "backend"],
    )
    weight = GaugeMetricFamily("lbproxy_backend_weight", "Current weight", labels=["pool", "backend"])
    errors = CounterMetricFamily(
        "lbproxy_upstream_errors",
        "Upstream errors by kind (connect_refused, connect_timeout, reset, bad_response, "
        "response_timeout, no_backend)",
        labels=["pool", "backend", "kind"],
    )
    retries = CounterMetricFamily("lbproxy_retries", "Attempts after a failed one", labels=["pool"])
    connect = HistogramMetricFamily(
        "lbproxy_upstream_connect_duration_seconds", "Time to connect to a backend", labels=["pool"]
    )
    for pool in snap["pools"]:
        errors.add_metric([pool["name"], "", "no_backend"], pool["no_backend_total"])
        retries.add_metric([pool["name"]], pool["retries_total"])
        buckets, total = pool["connect"]
        connect.add_metric([pool["name"]], buckets, total)
        for backend in pool["backends"]:
            labels = [pool["name"], backend["label"]]
            up.add_metric(labels, 1 if backend["state"] == BackendState.HEALTHY.value else 0)
            for s in BackendState:
                state.add_metric([*labels, s.value], 1 if backend["state"] == s.value else 0)
            active.add_metric(labels, backend["active"])
            weight.add_metric(labels, backend["weight"])
            for kind, count in backend["errors"].items():
                errors.add_metric([*labels, kind], count)
    yield from (up, state, active, weight, errors, retries, connect)

    checks = CounterMetricFamily(
        "lbproxy_health_checks", "Active health checks by result", labels=["pool", "backend", "result"]
    )
    transitions = CounterMetricFamily(
        "lbproxy_backend_transitions", "Backend state changes, by the state entered", labels=["pool", "backend", "to"]
    )
    ejections = CounterMetricFamily(
        "lbproxy_backend_ejections", "Passive (outlier) ejections", labels=["pool", "backend"]
    )
    for pool in snap["pools"]:
        for backend in pool["backends"]:
            labels = [pool["name"], backend["label"]]
            for to, count in backend["transitions"].items():
                transitions.add_metric([*labels, to], count)
            if not backend["record"]:
                continue
            if pool["health_check"]:
                checks.add_metric([*labels, "passed"], backend["checks_passed"])
                checks.add_metric([*labels, "failed"], backend["checks_failed"])
            ejections.add_metric(labels, backend["ejections_total"])
    yield from (checks, transitions, ejections)

    discovered = [pool for pool in snap["pools"] if pool.get("discovery_failures") is not None]
    if discovered:
        failures = CounterMetricFamily(
            "lbproxy_discovery_failures",
            "DNS lookups of dns backends that failed or found nothing (the last good set was kept)",
            labels=["pool"],
        )
        for pool in discovered:
            failures.add_metric([pool["name"]], pool["discovery_failures"])
        yield failures

    workers = snap.get("workers")
    if workers is not None:
        yield GaugeMetricFamily("lbproxy_workers", "Worker processes serving traffic", value=workers["running"])
        yield CounterMetricFamily(
            "lbproxy_worker_restarts", "Worker processes restarted after they died", value=workers["restarts"]
        )


class DaemonCollector:
    """Collects every lbproxy metric family from a running Daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def describe(self) -> list[Metric]:
        return []  # families are dynamic; skip the registry's describe-time collect

    def collect(self) -> Iterator[Metric]:
        return families(snapshot(self.daemon))


class _SnapshotCollector:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return families(self.snap)


def render_snapshot(snap: Snapshot) -> bytes:
    """The Prometheus text for a (merged) snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    return generate_latest(registry)


def make_registry(daemon: Daemon) -> CollectorRegistry:
    """A registry holding only this daemon's metrics (tests run several daemons per process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

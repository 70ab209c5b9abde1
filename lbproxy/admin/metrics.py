"""Prometheus exposition: one custom collector reading the daemon's plain counters at scrape time.

Nothing here runs on the data path: listeners and backends keep ints and ``lbproxy.stats``
histograms; this module turns them into metric families when ``/metrics`` is scraped.
Label values are bounded: listener, route, pool and backend names come from the config, ``code``
is an HTTP status; never a path or a client address.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from lbproxy import __version__
from lbproxy.l7.listener import HttpListener
from lbproxy.pool.backend import BackendState

if TYPE_CHECKING:
    from lbproxy.runtime.daemon import Daemon

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DaemonCollector:
    """Collects every lbproxy metric family from a running Daemon."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def describe(self) -> list[Metric]:
        return []  # families are dynamic; skip the registry's describe-time collect

    def collect(self) -> Iterator[Metric]:
        daemon = self.daemon
        info = GaugeMetricFamily("lbproxy_build_info", "lbproxy version and Python", labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        reloads = CounterMetricFamily("lbproxy_config_reloads", "Configuration reloads", labels=["result"])
        for result, count in daemon.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily(
            "lbproxy_config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded (start or last successful reload)",
            value=daemon.last_reload_success,
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
        for listener in daemon.listeners.values():
            name = listener.name
            stats = listener.stats
            conn_total.add_metric([name], stats.connections_total)
            conn_active.add_metric([name], len(listener.connections))
            conn_rejected.add_metric([name], stats.rejected_total)
            bytes_total.add_metric([name, "in"], stats.bytes_in)
            bytes_total.add_metric([name, "out"], stats.bytes_out)
            if isinstance(listener, HttpListener):
                for (route, pool, backend, code), count in list(listener.request_counts.items()):
                    requests.add_metric([name, route, pool, backend, str(code)], count)
                for pool, histogram in list(listener.durations.items()):
                    durations.add_metric([name, pool], histogram.cumulative(), histogram.total)
        yield from (conn_total, conn_active, conn_rejected, bytes_total, requests, durations)

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
        for pool in daemon.pools.values():
            errors.add_metric([pool.name, "", "no_backend"], pool.no_backend_total)
            retries.add_metric([pool.name], pool.retries_total)
            histogram = pool.connect_durations
            connect.add_metric([pool.name], histogram.cumulative(), histogram.total)
            for backend in pool.backends:
                labels = [pool.name, backend.label]
                up.add_metric(labels, 1 if backend.state is BackendState.HEALTHY else 0)
                for s in BackendState:
                    state.add_metric([*labels, s.value], 1 if backend.state is s else 0)
                active.add_metric(labels, backend.active)
                weight.add_metric(labels, backend.weight)
                for kind, count in list(backend.errors.items()):
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
        for pool in daemon.pools.values():
            health = daemon.health.pools.get(pool.name)
            for backend in pool.backends:
                labels = [pool.name, backend.label]
                for to, count in backend.transitions.items():
                    transitions.add_metric([*labels, to], count)
                record = health.records.get(backend) if health is not None else None
                if record is None:
                    continue
                if pool.config.health_check is not None:
                    checks.add_metric([*labels, "passed"], record.checks_passed)
                    checks.add_metric([*labels, "failed"], record.checks_failed)
                ejections.add_metric(labels, record.ejections_total)
        yield from (checks, transitions, ejections)


def make_registry(daemon: Daemon) -> CollectorRegistry:
    """A registry holding only this daemon's metrics (tests run several daemons per process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

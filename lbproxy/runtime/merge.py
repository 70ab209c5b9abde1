"""Merging what the workers report into one view of the daemon: pure functions, no I/O.

Rules (with ``workers: N``):
- Membership and health come from the supervisor's view (the one place active checks and DNS
  discovery run): which pools and backends exist, their state, admin state, weight, check
  counts and last check. A backend ejected (passive health, per worker) in any worker shows as
  ``ejected`` when the view has it healthy; ``worker_states`` lists its state in each worker.
- Traffic numbers are summed over workers: connections, bytes, requests, durations (histogram
  buckets), errors, retries, active connections and requests in flight, ejections.
- ``/metrics`` counters stay monotonic when a worker dies: the last numbers seen from it (at the
  last scrape) are folded into a ``departed`` total that later scrapes add in. Gauges (active
  connections) are not folded.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Snapshot = dict[str, Any]

# /status backend fields that come from the view, never summed
_VIEW_FIELDS = frozenset(
    {"address", "state", "admin", "checked_up", "weight", "effective_weight", "last_check", "checks_passed", "checks_failed"}
)
_LISTENER_SKIP = frozenset({"name", "requests", "durations"})  # every other listener field is a number (or None: n/a)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sum(a: object, b: object) -> object:
    """``a + b`` where None means "not applicable here" (None + None stays None)."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b  # type: ignore[operator]


def _add_fields(total: dict[str, Any], item: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> None:
    """Sum numbers and dicts of numbers of ``item`` into ``total``; other fields: first one wins."""
    for key, value in item.items():
        if key in skip:
            continue
        if key not in total:
            total[key] = copy.deepcopy(value)
        elif _number(value) and _number(total[key]):
            total[key] += value
        elif isinstance(value, dict) and isinstance(total[key], dict):
            for k, v in value.items():
                if _number(v):
                    total[key][k] = total[key].get(k, 0) + v


# -- /status -------------------------------------------------------------------------------------


def merge_status(view: Mapping[str, Any], workers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One /status document from the view's and each worker's ``Daemon.status()``.

    ``workers`` holds one report per worker slot: ``index``, ``pid``, ``state``, ``restarts``
    and ``status`` (its document, or None when it did not answer).
    """
    statuses = [w["status"] for w in workers if w.get("status") is not None]
    listeners: dict[str, dict[str, Any]] = {}
    for source in [view, *statuses]:
        for listener in source.get("listeners", []):
            total = listeners.setdefault(listener["name"], {})
            _add_fields(total, listener)
    pools: list[dict[str, Any]] = []
    for view_pool in view.get("pools", []):
        pool = {k: copy.deepcopy(v) for k, v in view_pool.items() if k != "backends"}
        worker_pools = [p for s in statuses for p in s.get("pools", []) if p["name"] == pool["name"]]
        for worker_pool in worker_pools:
            pool["no_backend_total"] = pool.get("no_backend_total", 0) + worker_pool.get("no_backend_total", 0)
        backends = []
        for view_backend in view_pool.get("backends", []):
            backend = copy.deepcopy(view_backend)
            states: list[str | None] = []
            ejected = False
            for status in (w.get("status") for w in workers):
                found = _find_backend(status, pool["name"], backend["address"]) if status is not None else None
                states.append(found["state"] if found is not None else None)
                if found is None:
                    continue
                ejected = ejected or bool(found.get("ejected"))
                _add_fields(backend, found, skip=_VIEW_FIELDS)
            backend["ejected"] = ejected
            if ejected and backend["state"] == "healthy":
                backend["state"] = "ejected"
            backend["worker_states"] = states
            backends.append(backend)
        pool["backends"] = backends
        pools.append(pool)
    document = {k: copy.deepcopy(v) for k, v in view.items() if k not in ("listeners", "pools")}
    document["listeners"] = list(listeners.values())
    document["pools"] = pools
    document["workers"] = [_worker_summary(w) for w in workers]
    return document


def _find_backend(status: Mapping[str, Any], pool: str, address: str) -> Mapping[str, Any] | None:
    for p in status.get("pools", []):
        if p["name"] == pool:
            for b in p.get("backends", []):
                if b["address"] == address:
                    return b
    return None


def _worker_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    summary = {k: report.get(k) for k in ("index", "pid", "state", "restarts")}
    status = report.get("status")
    if status is not None:
        listeners = status.get("listeners", [])
        summary["requests_total"] = sum(l.get("requests_total", 0) for l in listeners)
        summary["connections_total"] = sum(l.get("connections_total", 0) for l in listeners)
        summary["connections_active"] = sum(l.get("connections_active", 0) for l in listeners)
        summary["reloads"] = status.get("reloads")
        summary["uptime_seconds"] = status.get("uptime_seconds")
    return summary


# -- /metrics ------------------------------------------------------------------------------------


def _keyed(snap: Snapshot) -> dict[str, Any]:
    """A snapshot re-shaped for summing: dicts keyed by listener, request key, pool, backend."""
    listeners: dict[str, Any] = {}
    for listener in snap.get("listeners", []):
        listeners[listener["name"]] = {
            **{k: v for k, v in listener.items() if k not in _LISTENER_SKIP},
            "requests": {tuple(r[:4]): r[4] for r in listener["requests"]},
            "durations": {d[0]: (d[1], d[2]) for d in listener["durations"]},
        }
    pools: dict[str, Any] = {}
    for pool in snap.get("pools", []):
        pools[pool["name"]] = {
            "no_backend_total": pool["no_backend_total"],
            "retries_total": pool["retries_total"],
            "connect": tuple(pool["connect"]),
            "backends": {b["label"]: b for b in pool["backends"]},
        }
    return {"listeners": listeners, "pools": pools}


def _add_histogram(a: tuple[list[Any], float] | None, b: tuple[list[Any], float]) -> tuple[list[Any], float]:
    """Sum two cumulative histograms with the same buckets: ``([[le, count], ...], total)``."""
    if a is None:
        return [list(x) for x in b[0]], b[1]
    counts = {str(le): n for le, n in a[0]}
    for le, n in b[0]:
        counts[str(le)] = counts.get(str(le), 0) + n
    return [[le, counts[str(le)]] for le, _ in b[0]], a[1] + b[1]


def fold_departed(departed: Snapshot | None, last: Snapshot, view: Snapshot) -> Snapshot:
    """``departed`` plus the counters of a worker that exited (``last``: what it reported last).

    Only counters are kept (gauges of a dead worker are zero); backends the view no longer has
    are dropped, so this stays bounded whatever DNS discovery does over time.
    """
    known = {(p["name"], b["label"]) for p in view.get("pools", []) for b in p["backends"]}
    merged = merge_metrics({**view, "listeners": []}, [last], departed)
    for listener in merged["listeners"]:
        listener["connections_active"] = 0
    for pool in merged["pools"]:
        pool["backends"] = [b for b in pool["backends"] if (pool["name"], b["label"]) in known]
        for backend in pool["backends"]:
            backend["active"] = 0
            backend["transitions"] = {"ejected": backend["transitions"].get("ejected", 0)}
    return merged


def merge_metrics(view: Snapshot, workers: Iterable[Snapshot], departed: Snapshot | None = None) -> Snapshot:
    """One metrics snapshot for the whole daemon (see the rules above)."""
    sources = [_keyed(s) for s in workers]
    if departed is not None:
        sources.append(_keyed(departed))
    sources.append(_keyed(view))  # its dns listeners; its pools carry no traffic numbers
    listeners: dict[str, dict[str, Any]] = {}
    for source in sources:
        for name, item in source["listeners"].items():
            total = listeners.setdefault(name, {"name": name, "requests": {}, "durations": {}})
            for key, value in item.items():
                if key not in ("requests", "durations"):
                    total[key] = _sum(total.get(key), value)
            for key, count in item["requests"].items():
                total["requests"][key] = total["requests"].get(key, 0) + count
            for pool, histogram in item["durations"].items():
                total["durations"][pool] = _add_histogram(total["durations"].get(pool), histogram)
    traffic = sources[:-1]
    pools: list[dict[str, Any]] = []
    for view_pool in view.get("pools", []):
        name = view_pool["name"]
        pool = {k: v for k, v in view_pool.items() if k != "backends"}
        connect: tuple[list[Any], float] = (
            [list(x) for x in view_pool["connect"][0]], view_pool["connect"][1],
        )  # fmt: skip
        for source in traffic:
            theirs = source["pools"].get(name)
            if theirs is None:
                continue
            pool["no_backend_total"] += theirs["no_backend_total"]
            pool["retries_total"] += theirs["retries_total"]
            connect = _add_histogram(connect, theirs["connect"])
        pool["connect"] = [connect[0], connect[1]]
        backends = []
        for view_backend in view_pool["backends"]:
            backend = copy.deepcopy(view_backend)
            transitions = dict(backend["transitions"])
            transitions.pop("ejected", None)
            ejected_count = 0
            ejected_now = False
            for source in traffic:
                theirs = source["pools"].get(name, {}).get("backends", {}).get(backend["label"])
                if theirs is None:
                    continue
                backend["active"] += theirs["active"]
                backend["ejections_total"] += theirs["ejections_total"]
                for kind, count in theirs["errors"].items():
                    backend["errors"][kind] = backend["errors"].get(kind, 0) + count
                ejected_count += theirs["transitions"].get("ejected", 0)
                ejected_now = ejected_now or theirs["state"] == "ejected"
            if ejected_count:
                transitions["ejected"] = ejected_count
            backend["transitions"] = transitions
            if ejected_now and backend["state"] == "healthy":
                backend["state"] = "ejected"
            backends.append(backend)
        pool["backends"] = backends
        pools.append(pool)
    return {
        "reloads": dict(view.get("reloads", {})),
        "last_reload_success": view.get("last_reload_success", 0.0),
        "listeners": [
            {
                **{k: v for k, v in item.items() if k not in ("requests", "durations")},
                "requests": [[*key, count] for key, count in item["requests"].items()],
                "durations": [[pool, h[0], h[1]] for pool, h in item["durations"].items()],
            }
            for item in listeners.values()
        ],
        "pools": pools,
    }

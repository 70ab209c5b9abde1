"""benchmarks/run.py measures a run again when the hypervisor stole the proxy's or the load
generator's core (``--max-steal``, ``--steal-retries``), and the table's notes say so.

The decision is pure logic over the figures ``measured`` reads from /proc/stat, so the runs
here are canned: each is what one ``_measure`` call returned, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from tests.bench_modules import bench_run


def runner_measuring(steals: list[tuple[float, float]], max_steal: float = 0.10, retries: int = 2) -> tuple[Any, list[str]]:
    """A Runner whose ``_measure`` returns runs with these (proxy core, load core) steal shares."""
    args = SimpleNamespace(duration=5.0, rounds=1, max_steal=max_steal, steal_retries=retries)
    runner = bench_run.Runner(SimpleNamespace(), args)
    logged: list[str] = []
    runner.log = logged.append
    runs: Iterator[dict[str, Any]] = (
        {"proxy_core_steal": proxy, "load_core_steal": load, "cpu_us": 20.0 + i} for i, (proxy, load) in enumerate(steals)
    )
    runner._measure = lambda sc, system, proc, duration: next(runs)
    return runner, logged


SYSTEM = SimpleNamespace(label="lbproxy")


def test_a_steady_run_is_kept_as_it_is() -> None:
    runner, logged = runner_measuring([(0.02, 0.0)])
    run = runner._measure_steady(None, SYSTEM, None)
    assert run["cpu_us"] == 20.0 and "steal_retried" not in run and not logged


def test_a_run_robbed_on_either_core_is_measured_again() -> None:
    runner, logged = runner_measuring([(0.31, 0.0), (0.0, 0.22), (0.04, 0.01)])
    run = runner._measure_steady(None, SYSTEM, None)
    assert run["cpu_us"] == 22.0, "the third, steady run is the one kept"
    assert run["steal_retried"] == [0.31, 0.22]
    assert len(logged) == 2 and "lost 31% of a core to steal" in logged[0]


def test_the_retries_are_bounded_and_the_last_run_is_kept() -> None:
    runner, _ = runner_measuring([(0.40, 0.0), (0.35, 0.0), (0.30, 0.0), (0.0, 0.0)], retries=2)
    run = runner._measure_steady(None, SYSTEM, None)
    assert run["cpu_us"] == 22.0 and run["proxy_core_steal"] == 0.30 and run["steal_retried"] == [0.4, 0.35]


def test_max_steal_1_keeps_every_run() -> None:
    runner, _ = runner_measuring([(0.9, 0.9)], max_steal=1.0)
    assert runner._measure_steady(None, SYSTEM, None)["cpu_us"] == 20.0


def test_the_notes_count_dropped_runs_and_robbed_runs_kept() -> None:
    results = {
        "l4-bulk-1": {"systems": {
            "lbproxy": {"runs": [
                {"proxy_core_steal": 0.01, "load_core_steal": 0.0, "steal_retried": [0.12, 0.45]},
                {"proxy_core_steal": 0.30, "load_core_steal": 0.0, "steal_retried": [0.2, 0.25]},
                {"proxy_core_steal": 0.0, "load_core_steal": 0.0},
            ]},
            "haproxy": {"runs": [{"proxy_core_steal": 0.0, "load_core_steal": 0.05, "steal_retried": [0.11]}]},
            "nginx": {"runs": [{"proxy_core_steal": 0.0, "load_core_steal": 0.0, "steal_retried": [0.121, 0.124]}]},
        }},
        "idle-l7": {"kind": "idle", "systems": {"lbproxy": {"runs": [{"proxy_core_steal": 0.2, "load_core_steal": 0.0}]}}},
    }  # fmt: skip
    assert bench_run.steal_notes(results, 0.10) == [
        "l4-bulk-1 / lbproxy: 4 runs dropped and measured again, the hypervisor having taken 12%–45% of the "
        "proxy or load core (steal)",
        "l4-bulk-1 / lbproxy: 1 of 3 runs kept with steal above 10% (up to 30%), after the retries ran out",
        "l4-bulk-1 / haproxy: 1 run dropped and measured again, the hypervisor having taken 11% of the proxy or "
        "load core (steal)",
        # two shares that print alike are one figure, not "12%–12%"
        "l4-bulk-1 / nginx: 2 runs dropped and measured again, the hypervisor having taken 12% of the proxy or "
        "load core (steal)",
        "idle-l7 / lbproxy: 1 of 1 run kept with steal above 10% (up to 20%), not measured again (idle scenarios)",
    ]

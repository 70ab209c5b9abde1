"""benchmarks/cpu_quota.py: a process in a quota cgroup gets no more than its share of a CPU.

The scaling benchmark's verdict rests on this (each worker held to a share of a CPU on a
machine with no core per worker to spare), so it is checked against a real busy process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Loaded by path: putting benchmarks/ on sys.path would let its run.py, tls.py ... shadow
# other modules for the rest of the test session.
_spec = importlib.util.spec_from_file_location(
    "bench_cpu_quota", Path(__file__).resolve().parent.parent / "benchmarks" / "cpu_quota.py"
)
assert _spec is not None and _spec.loader is not None
cpu_quota = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_quota)

pytestmark = pytest.mark.skipif(not cpu_quota.available(), reason="needs a writable cgroup cpu controller (root)")

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def test_a_busy_process_is_held_to_its_share() -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    quota = cpu_quota.CpuQuota.create("test-spinner", 0.2)
    assert quota is not None
    try:
        quota.add(spinner.pid)
        assert quota.pids() == [spinner.pid]
        before, t0 = _cpu_seconds(spinner.pid), time.monotonic()
        time.sleep(1.5)
        used = (_cpu_seconds(spinner.pid) - before) / (time.monotonic() - t0)
        # Unconfined it would use a whole CPU; CLK_TCK granularity and the period edge allow some slack.
        assert 0.1 < used < 0.3, used
    finally:
        spinner.kill()
        spinner.wait()
        quota.remove()
    assert not quota.path.exists()


def test_a_share_must_be_positive() -> None:
    with pytest.raises(ValueError):
        cpu_quota.CpuQuota.create("test-zero", 0)

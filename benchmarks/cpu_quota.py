"""CPU quotas for processes under test: each one held to a fraction of a CPU by a cgroup.

Why: issue 8's scaling target ("2 workers carry at least 1.7x the requests of 1 worker where the
load generator isn't the limit") needs a CPU per worker that nothing else uses. On a 2-core
machine there is none to spare: wrk and the backends take one core, and two workers sharing the
other simply split it. Holding each worker to a fraction of a CPU (``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us`` in v1) gives every worker its own, smaller, CPU: the workers' combined
capacity then grows with their number while the load core stays below saturation, so the ratio
of requests says whether the workers share a bottleneck (an accept lock, the supervisor, one
hot socket), which is what the target asks.

What it doesn't show: contention for caches and memory bandwidth between cores, which real
multi-core machines add (both workers here run on the same core, in turn).

    quota = CpuQuota.create("lbproxy-w2-1", 0.35)   # None when no writable cpu controller
    quota.add(pid)
    ...
    quota.remove()                                   # after the processes in it have exited

Needs root (or a delegated cgroup); ``available()`` says whether it can work here.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

PERIOD_US = 10_000  # 10 ms: short periods keep the throttling's stalls (and the p99) short

_V2_ROOT = Path("/sys/fs/cgroup")
_V1_ROOT = Path("/sys/fs/cgroup/cpu")


def _root() -> tuple[Path, int] | None:
    """The directory new cgroups go in and the cgroup version, or None."""
    controllers = _V2_ROOT / "cgroup.controllers"
    if controllers.exists():
        if "cpu" in controllers.read_text().split() and os.access(_V2_ROOT, os.W_OK):
            subtree = (_V2_ROOT / "cgroup.subtree_control").read_text().split()
            if "cpu" in subtree:
                return _V2_ROOT, 2
        return None
    if (_V1_ROOT / "cpu.cfs_quota_us").exists() and os.access(_V1_ROOT, os.W_OK):
        return _V1_ROOT, 1
    return None


# A busy loop at SCHED_IDLE priority: it runs only when nothing else on its CPU wants to, so it
# takes no CPU from the workers, but the CPU never goes idle while a worker is throttled. Without
# it a lone worker's CPU sits idle two thirds of the time, and on a VM an idle vCPU is handed to
# other guests, whose work evicts the worker's caches: measured 53 µs per request with 1 worker
# against 45 with 2 (whose CPU idles less), which made 2 workers look 2.36x as fast as 1.
IDLE_FILLER = (
    "import os\n"
    "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
    "while True:\n"
    "    pass\n"
)


def available() -> bool:
    """Whether quotas can be set here (a writable cgroup cpu controller)."""
    return _root() is not None


class CpuQuota:
    """One cgroup whose processes together get at most ``share`` of a CPU."""

    def __init__(self, path: Path, version: int, share: float) -> None:
        self.path = path
        self.version = version
        self.share = share

    @classmethod
    def create(cls, name: str, share: float) -> CpuQuota | None:
        """A new cgroup ``lbproxy-bench-<pid>-<name>`` limited to ``share`` (0 < share) of a CPU,
        or None when no writable cpu controller exists. Raises ValueError for a share <= 0."""
        if share <= 0:
            raise ValueError(f"a CPU share must be positive, not {share}")
        found = _root()
        if found is None:
            return None
        root, version = found
        path = root / f"lbproxy-bench-{os.getpid()}-{name}"
        path.mkdir(exist_ok=True)
        quota_us = max(1000, round(share * PERIOD_US))
        if version == 2:
            (path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}\n")
        else:
            (path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
            (path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
        return cls(path, version, share)

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> list[int]:
        """The processes in this cgroup now."""
        try:
            return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def remove(self, wait: float = 5.0) -> None:
        """Delete the cgroup once its processes have gone (waits up to ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def __repr__(self) -> str:
        return f"<CpuQuota {self.path.name} {self.share:g} CPU (cgroup v{self.version})>"

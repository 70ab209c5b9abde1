"""benchmarks/run.py as a module for the tests of its pure parts (``bench_run``).

Loaded by path: putting benchmarks/ on sys.path would let its run.py, tls.py ... shadow other
modules for the rest of the test session. run.py imports cpu_quota and browser_request by those
names, so they are loaded first. Loaded once per session, whichever test module asks first.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if "cpu_quota" not in sys.modules:
    _load("cpu_quota", BENCH / "cpu_quota.py")
if "browser_request" not in sys.modules:
    _load("browser_request", BENCH / "browser_request.py")
bench_run = sys.modules.get("bench_run") or _load("bench_run", BENCH / "run.py")

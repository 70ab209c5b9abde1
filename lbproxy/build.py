"""Which build of lbproxy is running: pure Python, or with its L7 data path compiled by mypyc.

The compiled build is optional (``LBPROXY_COMPILE=1`` at install time, see ``setup.py``). It
compiles the modules in ``COMPILED_MODULES`` from the same source, unchanged, so both builds
behave the same; the compiled one spends less CPU per request (benchmarks/README.md, "a compiled
build"). ``lbproxy --version`` and the ``lbproxy_build_info`` metric say which one runs.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
from pathlib import Path

log = logging.getLogger("lbproxy.build")

# The per-request and per-connection path: the L7 proxy's own modules, and the routing, pool,
# round-robin and counter modules it calls for every request. setup.py compiles exactly these
# (it reads this tuple from this file, so keep this module free of imports beyond the stdlib).
# Not lbproxy.l7.listener: its HttpListener subclasses an interpreted ABC (BaseListener), and
# mypyc then shares the base's ABC cache, so isinstance(tcp_listener, HttpListener) turned true.
COMPILED_MODULES = (
    "lbproxy.l7.session",
    "lbproxy.l7.exchange",
    "lbproxy.l7.upstream",
    "lbproxy.l7.headers",
    "lbproxy.net.outbox",
    "lbproxy.routing.table",
    "lbproxy.balancing.round_robin",
    "lbproxy.pool.pool",
    "lbproxy.pool.backend",
    "lbproxy.stats",
)


# Written by setup.py next to this file when it compiles: {module: sha256 of the source compiled}.
SOURCES_FILE = Path(__file__).with_name("_compiled_sources.json")


def source_digest(path: Path) -> str:
    """The digest setup.py records for a compiled module's source."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_modules() -> tuple[str, ...]:
    """Those of ``COMPILED_MODULES`` that import from an extension module (compiled), in order."""
    compiled = []
    for name in COMPILED_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            compiled.append(name)
    return tuple(compiled)


def build_name() -> str:
    """``"mypyc"`` when every data-path module is compiled, ``"python"`` when none is, else
    ``"partial"`` (a compiled build with some modules replaced by their source: not supported)."""
    compiled = compiled_modules()
    if not compiled:
        return "python"
    return "mypyc" if len(compiled) == len(COMPILED_MODULES) else "partial"


def stale_modules() -> tuple[str, ...]:
    """Compiled modules whose source is not the one they were compiled from.

    A checkout edited after ``setup.py build_ext --inplace`` still imports the old compiled
    module, not the edited source, and nothing else would say so. Empty for a pure build."""
    compiled = compiled_modules()
    if not compiled:
        return ()
    try:
        recorded = json.loads(SOURCES_FILE.read_text())
    except (OSError, ValueError):
        return compiled  # compiled without a record: nothing vouches for any of them
    sources = {}
    for name in compiled:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        sources[name] = Path(spec.origin).parent / (name.rpartition(".")[2] + ".py")
    return changed_sources(sources, recorded)


def changed_sources(sources: dict[str, Path], recorded: dict[str, str]) -> tuple[str, ...]:
    """The modules of ``sources`` (name: source file) whose file's digest isn't ``recorded``.
    A missing source file is not a change: installed without it, the compiled module is all
    there is."""
    stale = []
    for name, path in sources.items():
        try:
            digest = source_digest(path)
        except OSError:
            continue
        if recorded.get(name) != digest:
            stale.append(name)
    return tuple(stale)


def describe() -> str:
    """``"mypyc build"``, ``"python build"``, with the stale modules named if any."""
    stale = stale_modules()
    suffix = f"; compiled from older source: {', '.join(stale)}" if stale else ""
    return f"{build_name()} build{suffix}"


def warn_if_stale() -> None:
    """Log a warning naming the compiled modules that run older code than their source."""
    stale = stale_modules()
    if stale:
        log.warning(
            "compiled modules run older code than their source: %s (rebuild: LBPROXY_COMPILE=1 "
            "python3 setup.py build_ext --inplace; or delete their .so files)", ", ".join(stale)
        )

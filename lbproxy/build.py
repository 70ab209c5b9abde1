"""Which build of lbproxy is running: pure Python, or with its L7 data path compiled by mypyc.

The compiled build is optional (``LBPROXY_COMPILE=1`` at install time, see ``setup.py``). It
compiles the modules in ``COMPILED_MODULES`` from the same source, unchanged, so both builds
behave the same; the compiled one spends less CPU per request (benchmarks/README.md, "a compiled
build"). ``lbproxy --version`` and the ``lbproxy_build_info`` metric say which one runs.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util

# The per-request and per-connection path of the L7 proxy. setup.py compiles exactly these.
COMPILED_MODULES = (
    "lbproxy.l7.session",
    "lbproxy.l7.exchange",
    "lbproxy.l7.upstream",
    "lbproxy.l7.headers",
    "lbproxy.net.outbox",
)


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

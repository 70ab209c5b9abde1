"""Packaging beyond pyproject.toml: the optional compiled build.

``pip install .`` installs lbproxy as pure Python. ``LBPROXY_COMPILE=1 pip install .`` also
compiles the L7 data path (``lbproxy.build.COMPILED_MODULES``) with mypyc, from the same
source; it needs a C compiler and the Python headers, and pip fetches mypy for the build (the
``setup_requires`` below, which a PEP 517 build installs before running this file again). For
a checkout, ``LBPROXY_COMPILE=1 python3 setup.py build_ext --inplace`` puts the compiled
modules next to their source (``git clean -fX lbproxy`` removes them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

from setuptools import setup

MYPY = "mypy==2.4.1"  # the version the source is type-checked with (pyproject.toml, test extra)


def load_build_module() -> ModuleType:
    """lbproxy/build.py by file path: it names the modules to compile and how their source is
    digested, and imports only the standard library, so the package needn't be importable here."""
    spec = importlib.util.spec_from_file_location("lbproxy_build", Path(__file__).with_name("lbproxy") / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = load_build_module()
SOURCES = [name.replace(".", "/") + ".py" for name in BUILD.COMPILED_MODULES]


def compiling() -> bool:
    return os.environ.get("LBPROXY_COMPILE", "").lower() in ("1", "true", "yes")


def ext_modules() -> list[object]:
    if not compiling():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        # The first pass of a PEP 517 build only collects setup_requires; mypy comes with them.
        print(f"LBPROXY_COMPILE is set but mypyc is not importable yet (needs {MYPY})", file=sys.stderr)
        return []
    # What was compiled, so lbproxy.build.stale_modules() can tell when the source moved on.
    digests = {name: BUILD.source_digest(Path(source)) for name, source in zip(BUILD.COMPILED_MODULES, SOURCES)}
    Path("lbproxy/_compiled_sources.json").write_text(json.dumps(digests, indent=1) + "\n")
    # One group, named inside the package: its shared library is lbproxy/_compiled__mypyc.*.so,
    # so the package directory holds the whole compiled build.
    return mypycify(SOURCES, opt_level="3", group_name="lbproxy._compiled")


setup(
    ext_modules=ext_modules(),
    setup_requires=[MYPY] if compiling() else [],
    package_data={"lbproxy": ["_compiled_sources.json"]} if compiling() else {},
)

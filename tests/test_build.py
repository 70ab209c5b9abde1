"""Which build runs (lbproxy.build): pure Python or compiled by mypyc, as --version and the
lbproxy_build_info metric report it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lbproxy import build


@pytest.mark.parametrize(
    ("modules", "expected"),
    [
        (("lbproxy.cli", "lbproxy.errors"), "python"),
        (("httptools.parser.parser", "httptools.parser.url_parser"), "mypyc"),
        (("httptools.parser.parser", "lbproxy.cli"), "partial"),
    ],
    ids=["none-compiled", "all-compiled", "some-compiled"],
)
def test_build_name_counts_the_modules_that_load_from_an_extension(
    monkeypatch: pytest.MonkeyPatch, modules: tuple[str, ...], expected: str
) -> None:
    # httptools' parser is a real extension module, lbproxy.cli a real source one.
    monkeypatch.setattr(build, "COMPILED_MODULES", modules)
    assert build.build_name() == expected
    assert build.compiled_modules() == tuple(m for m in modules if m.startswith("httptools"))


def test_the_running_build_is_whole_and_reported_by_version() -> None:
    name = build.build_name()
    assert name in ("python", "mypyc"), f"a partial build: {build.compiled_modules()}"
    out = subprocess.run([sys.executable, "-m", "lbproxy", "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.endswith(f"({name} build)\n"), out


def test_build_info_metric_names_the_build() -> None:
    from lbproxy.admin import metrics

    assert metrics.BUILD == build.build_name()

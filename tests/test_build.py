"""Which build runs (lbproxy.build): pure Python or compiled by mypyc, as --version and the
lbproxy_build_info metric report it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_a_source_edited_after_compiling_is_named_stale(tmp_path: Path) -> None:
    kept, edited, absent = tmp_path / "kept.py", tmp_path / "edited.py", tmp_path / "absent.py"
    kept.write_text("x = 1\n")
    edited.write_text("x = 1\n")
    recorded = {"pkg.kept": build.source_digest(kept), "pkg.edited": build.source_digest(edited), "pkg.absent": "0"}
    edited.write_text("x = 2\n")
    sources = {"pkg.kept": kept, "pkg.edited": edited, "pkg.absent": absent, "pkg.unrecorded": kept}
    assert build.changed_sources(sources, recorded) == ("pkg.edited", "pkg.unrecorded")


def test_a_compiled_build_without_its_record_is_all_stale(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(build, "COMPILED_MODULES", ("httptools.parser.parser",))
    monkeypatch.setattr(build, "SOURCES_FILE", tmp_path / "missing.json")
    assert build.stale_modules() == ("httptools.parser.parser",)
    assert build.describe() == "mypyc build; compiled from older source: httptools.parser.parser"


def test_the_running_build_is_not_stale() -> None:
    assert build.stale_modules() == ()

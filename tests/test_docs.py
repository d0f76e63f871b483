"""The README stays a front page and the docs stay true to the code (issue 23).

- docs/configuration.md's settings table is what ``scripts/settings_table.py`` generates from
  ``app.config.Settings`` now, so a setting added without regenerating it fails here;
- README.md has at most 300 lines (the reference lives in docs/);
- every relative link in README.md and docs/*.md points at a file that exists (anchors are
  not checked).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 300
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=\"([^\"]+)\"", re.I)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, ...


def _settings_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "scripts" / "settings_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_table_in_the_docs_is_generated_from_settings() -> None:
    generator = _settings_table()
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert generator.START in text and generator.END in text, "docs/configuration.md lost its settings markers"
    assert generator.current(text) == generator.table(), (
        "docs/configuration.md's settings table is not what app.config.Settings says now: "
        "run scripts/settings_table.py --write (and commit docs/configuration.md)"
    )


def test_settings_table_generator_needs_no_tensorflow() -> None:
    """``app.config`` and ``app.cli`` import without TensorFlow, so the generator runs in a second."""
    import subprocess

    probe = (
        "import runpy, sys; sys.argv = ['settings_table.py']; "
        f"runpy.run_path({str(ROOT / 'scripts' / 'settings_table.py')!r}, run_name='not_main'); "
        "print('tensorflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"


def test_settings_table_has_a_row_per_setting() -> None:
    import dataclasses

    from app.config import Settings

    table = _settings_table().table()
    for field in dataclasses.fields(Settings):
        assert f"| `{field.name}` | `GRAPHSERVE_{field.name.upper()}` |" in table


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, more than {README_MAX_LINES}: move the reference into docs/"
    )


def _links(text: str) -> list[str]:
    prose = CODE_SPAN.sub("", FENCE.sub("", text))
    return [*INLINE_LINK.findall(prose), *REFERENCE_LINK.findall(prose), *HTML_LINK.findall(prose)]


def test_the_link_finder_sees_links_and_skips_code() -> None:
    text = "[a](docs/a.md#x) ![b](b.png) `[c](c.md)`\n```\n[d](d.md)\n```\n[e]: e.md\n<https://f> [g](https://g)"
    assert sorted(_links(text)) == ["b.png", "docs/a.md#x", "e.md", "https://g"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    broken = []
    for target in _links(page.read_text()):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"

"""The front pages stay short enough to read and every relative link in the docs leads somewhere (issue #34):
a page that grows back to 40 KB, or a section moved without its links, is caught here, not by a reader."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_front_pages_stay_small():
    assert (ROOT / "README.md").stat().st_size <= 12_288
    assert (ROOT / "BENCHMARKS.md").stat().st_size <= 15_360


def test_readme_keeps_the_setup_and_test_commands():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text  # CI and newcomers rely on these two
    assert "docs/results.md" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # web addresses, mailto:, anchors within the page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"

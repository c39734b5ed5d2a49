"""The README and docs/ hold together: every relative link and image points at a file that exists (and at a
heading that exists, for `#anchors`), and the README stays the short page a newcomer reads in five minutes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
README_LIMIT = 12_000  # characters


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def outside_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.DOTALL)


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_relative_link_resolves(page):
    for target in LINK.findall(outside_code(page.read_text())):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: no heading for #{anchor} in {linked.name}"


def test_the_readme_is_short():
    """Counted as a reader sees it: the HTML comments (the doc-test markers, tests/test_docs_run.py) are left out."""
    seen = re.sub(r"<!--.*?-->\n?", "", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    assert len(seen) <= README_LIMIT


def test_every_docs_page_is_reachable_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"docs/{page.name} is not linked from the README"


def test_every_test_the_fault_matrix_names_exists():
    """docs/faults.md names the test that proves each row: the file exists and so does the test function (a row
    `...::name` means the file named before it in the same cell)."""
    missing = []
    for cell in re.findall(r"\| [^|]*`(?:tests/|test_)[^|]*\|\s*$", (ROOT / "docs" / "faults.md").read_text(),
                           flags=re.MULTILINE):
        current = None
        for reference in re.findall(r"`([^`]+)`", cell):
            path, _, name = reference.partition("::")
            if path.startswith("tests/") or path.startswith("test_"):
                found = [ROOT / path] if path.startswith("tests/") else sorted((ROOT / "tests").rglob(path))
                current = found[0] if found and found[0].is_file() else None
                if current is None:
                    missing.append(reference)
                    continue
            elif path != "...":
                continue
            test = name.split("[")[0]
            if test and (current is None or f"def {test}(" not in current.read_text()):
                missing.append(reference)
    assert not missing, missing

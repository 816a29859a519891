"""Relative links in README.md and docs/*.md point at files that exist (anchors at headings that exist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+://|mailto:", m)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page):
    bad = []
    for link in links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            bad.append(link)
        elif anchor and target.suffix == ".md":
            headings = {_anchor(h) for h in re.findall(r"^#+ (.*)$", target.read_text(), flags=re.M)}
            if anchor not in headings:
                bad.append(link)
    assert not bad, f"{page.name}: broken links {bad}"


def test_readme_links_every_doc():
    readme = (ROOT / "README.md").read_text()
    for doc in ("recipes", "plugins", "python-api", "results", "research-notes", "benchmarks", "sweeps"):
        assert f"docs/{doc}.md" in readme, f"README does not link docs/{doc}.md"

"""The guides a newcomer reads: every relative link resolves, and results/README.md indexes every sweep."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def headings(path):
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(guide):
    text = re.sub(r"```.*?```", "", guide.read_text(), flags=re.S)  # commands in code blocks are not links
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):
            continue  # https:, mailto:
        path, _, anchor = link.partition("#")
        target = (guide.parent / path) if path else guide
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in headings(target):
            broken.append(f"{link}: no such heading")
    assert not broken, f"{guide.relative_to(ROOT)}: " + "; ".join(broken)


def test_results_readme_indexes_every_sweep():
    index = (ROOT / "results" / "README.md").read_text()
    sweeps = [d.name for d in (ROOT / "results").iterdir() if (d / "results.json").exists()]
    missing = [s for s in sweeps if f"({s}/" not in index and f"({s})" not in index]
    assert sweeps and not missing, f"results/README.md does not link to: {', '.join(missing)}"


def test_the_readme_is_a_guide_of_nanogpts_size():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250 and len(text.split()) <= 3000

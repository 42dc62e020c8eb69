"""The documentation points at things that exist: every relative link in the hand-written pages
(README, CONTRIBUTING, docs/, experiments/) names a file of the repository and, where it has
one, a heading of that page; every backticked `adamlab.<module>[.<name>]` in those pages and in
the package's docstrings imports. A renamed file, heading or function fails here, not in a
reader's browser."""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted(
    [ROOT / "README.md", ROOT / "CONTRIBUTING.md"]
    + list((ROOT / "docs").glob("*.md"))
    + list((ROOT / "experiments").glob("*.md"))
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"```.*?```", re.S)
DOTTED_NAME = re.compile(r"`(adamlab(?:\.\w+)+)")


def heading_anchors(page: pathlib.Path) -> set[str]:
    """GitHub's anchors of `page`'s headings: lower case, punctuation but hyphens and
    underscores dropped, spaces turned into hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", CODE_BLOCK.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def relative_links(page: pathlib.Path) -> list[str]:
    links = LINK.findall(CODE_BLOCK.sub("", page.read_text()))
    return [link for link in links if not re.match(r"[a-z]+:", link)]  # Not http:, mailto:.


def test_heading_anchors_follow_githubs_rule(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Ours vs optax (`adamlab compare`)\n\n## Step 2: the_loop\n")
    assert heading_anchors(page) == {"ours-vs-optax-adamlab-compare", "step-2-the_loop"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_name_existing_files_and_headings(page):
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, broken


def _resolves(dotted: str) -> bool:
    """Whether `dotted` is a module of adamlab or a name in one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        try:
            for name in parts[i:]:
                found = getattr(found, name)
        except AttributeError:
            return False
        return True
    return False


def test_backticked_adamlab_names_import():
    texts = [p.read_text() for p in PAGES]
    texts += [p.read_text() for p in (ROOT / "adamlab").rglob("*.py")]
    names = {name for text in texts for name in DOTTED_NAME.findall(text)}
    assert len(names) > 20  # The pages do name the package's modules.
    assert not _resolves("adamlab.training.no_such_module")
    assert not _resolves("adamlab.training.train.no_such_name")
    assert sorted(n for n in names if not _resolves(n)) == []

"""benchmarks/package_lines.py: each line's kind, the modern family's share of the optimizer
modules, and totals that add up to `wc -l` of the package (the figure issue 28 measures)."""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import package_lines  # noqa: E402  (the standard library only)

SOURCE = '''"""Module docstring,
two lines."""

import os  # a trailing comment: code


# a comment on its own
def f(x):
    """One line."""
    text = """not a docstring:
    a string in code"""
    return x  # code again


class Lion:
    """Two
    lines."""
'''


def test_line_kinds_sort_docstrings_comments_blanks_and_code():
    kinds = package_lines.line_kinds(SOURCE)
    assert kinds == [
        "docstring", "docstring", "blank", "code", "blank", "blank", "comment", "code",
        "docstring", "code", "code", "code", "blank", "blank", "code", "docstring", "docstring",
    ]  # fmt: skip


def test_modern_lines_take_the_modern_definitions_with_the_lines_above_them():
    lines = package_lines.modern_lines(SOURCE)
    assert lines == set(range(13, 18))  # The blank lines after f, then class Lion.
    table = 'TABLE = {\n    "adam": 1,\n    "lion": (\n        2\n    ),\n}\n'
    assert package_lines.modern_lines(table) == {3, 4, 5}


def test_totals_are_the_packages_line_count_and_features_cover_every_line():
    counts = package_lines.count()
    wc = sum(len(p.read_text().splitlines()) for p in package_lines.PACKAGE.rglob("*.py"))
    summary = package_lines.summary(counts)
    assert summary["lines"] == wc
    assert sum(row["lines"] for row in counts["features"]) == wc
    for row in counts["features"]:
        assert row["lines"] == sum(row[k] for k in package_lines.KINDS)
    assert 0 < summary["modern_family"] < summary["lines"]
    assert summary["without_modern_family"] == summary["lines"] - summary["modern_family"]

"""The README and the manual in docs/ hang together: every relative link (GitHub renders the
README's, mkdocs the pages') points at a file that exists and, with an anchor, at a heading of it;
the nav of mkdocs.yml lists exactly the pages; and the suite's times are written in one place."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from tests.pages import ROOT, flat

DOCS = ROOT / "docs"
TIMES = "docs/development.md"  # the one page that says how long the suite takes
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where a link is a link."""
    kept, fence = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence:
            kept.append(line)
    return re.sub(r"`[^`]*`", "", "\n".join(kept))


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and mkdocs' toc write it (they agree on emi's headings)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def anchors(path: Path) -> set[str]:
    if path.suffix != ".md":
        return set()
    return {slug(h) for h in re.findall(r"^#{1,6} +(.+?) *$", prose(path.read_text()), re.M)}


def broken(source: Path, text: str) -> list[str]:
    """The relative links of one markdown file that point nowhere."""
    bad = []
    for target in LINK.findall(prose(text)):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if not path.exists():
            bad.append(f"{source.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and anchor not in anchors(path):
            bad.append(f"{source.relative_to(ROOT)}: {target} (no such heading)")
    return bad


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken(path, path.read_text()) == []


def test_the_link_check_finds_what_is_broken():
    text = ("[ok](docs/judges.md) [gone](docs/nope.md) [bad anchor](docs/judges.md#nope) "
            "`[code](nope.md)` [web](https://example.org) [here](#the-manual)")
    assert broken(ROOT / "README.md", text) == ["README.md: docs/nope.md (no such file)",
                                                 "README.md: docs/judges.md#nope (no such heading)"]


def test_the_readme_links_to_the_manual_the_guarantees_and_the_layer_convention():
    linked = set(LINK.findall(prose((ROOT / "README.md").read_text())))
    assert {"docs/index.md", "docs/guarantees.md", "docs/conventions.md#layer-convention",
            "docs/development.md#how-long-the-suite-takes"} <= linked


def nav_pages(nav) -> list[str]:
    out = []
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_the_nav_lists_exactly_the_pages_in_docs():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in DOCS.glob("*.md"))


def suite_times() -> list[str]:
    """The times and test counts of development.md's section on how long the suite takes."""
    text = flat((ROOT / TIMES).read_text().split("## How long the suite takes", 1)[1].split("\n## ", 1)[0])
    return re.findall(r"\d+ min \d+ s|\d+ tests", text)


def test_the_suites_times_are_written_in_one_place_only():
    times = suite_times()
    assert len(times) >= 4, times  # the CI run, pytest, its test count, make test-fast
    others = [p for p in [*markdown_files(), *DOCS.rglob("*.md"), ROOT / "Makefile", ROOT / ".ci" / "run",
                          ROOT / "pyproject.toml"] if p != ROOT / TIMES]
    repeated = [(str(p.relative_to(ROOT)), t) for p in dict.fromkeys(others) for t in times if t in flat(p.read_text())]
    assert repeated == []

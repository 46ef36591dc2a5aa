"""The documentation's text for the tests that check what it says: the README (the front door) and
the manual's pages in docs/. A test names the page that holds its sentence; a page or a sentence
that has gone fails that test, naming both."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def page(name: str) -> str:
    """The text of README.md or docs/NAME.md (a path from the repository's root)."""
    path = ROOT / name
    assert path.is_file(), f"{name} is missing: the sentence this test checks had its place there"
    return path.read_text()


def flat(text: str) -> str:
    """Text with every run of whitespace (line breaks of the wrapped prose) made one space."""
    return " ".join(text.split())


def says(name: str, sentence: str) -> None:
    """Fails unless the page holds the sentence (whitespace-insensitive)."""
    assert flat(sentence) in flat(page(name)), f"{name} no longer says {sentence!r}"

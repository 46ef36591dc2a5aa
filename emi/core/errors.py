"""emi's errors: one base class, each message says what was expected, what was found, what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class EmiError(Exception):
    """Base class of every error emi raises on purpose (CLIs print these without a traceback)."""


class ModelLoadError(EmiError):
    """A checkpoint, adapter or pair could not be loaded or does not fit."""


class ConfigError(EmiError, ValueError):
    """A setting or argument is out of range or malformed."""


class StoreError(EmiError):
    """An activation store is missing, corrupted, or does not match the request."""


class JudgeError(EmiError):
    """A judge could not be reached or configured."""


class DirectionError(EmiError):
    """A direction artifact is malformed or does not fit the model."""


def read_text(path: str | Path, what: str) -> str:
    """A user's text file as UTF-8 (``what``: e.g. "question file"), or a ConfigError naming the
    byte offset of the first byte that is not UTF-8."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {str(path)!r} is a folder, not a file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8: byte {exc.start} is 0x{data[exc.start]:02x}; save "
                          f"it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """A user's YAML file (``what``: e.g. "question file"), or a ConfigError saying in one sentence
    that it is missing, not UTF-8, or where its syntax breaks (file:line:column); validating its
    contents is the caller's."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (safe)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} {where} is not valid YAML ({problem}); fix the syntax there") from None


def read_json(path: str | Path, what: str) -> Any:
    """A user's JSON file, or a ConfigError naming where it breaks (file:line:column)."""
    import json

    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg}); fix it "
                          f"there") from None

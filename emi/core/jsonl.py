"""Append-only JSONL files that survive a kill: whole lines are flushed and fsynced per batch,
and a torn last line (from a kill mid-write) is dropped on reading."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from emi.core.atomic import dumps, write_atomic
from emi.core.errors import ConfigError


def read(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """All complete records; with ``repair``, truncate a torn last line so appends stay valid."""
    path = Path(path)
    if not path.exists():
        return []
    records, good = [], 0
    with open(path, "rb") as fh:
        data = fh.read()
    lines = data.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if i == len(lines) - 1 and not line.endswith(b"\n"):
            break  # a kill mid-append tears only the last line, and a torn line has no newline yet
        try:
            records.append(json.loads(line.decode("utf-8")))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"line {i + 1} of {str(path)!r} is not UTF-8 (byte {good + exc.start} of the file); "
                              f"restore the file, or delete it to redo its work") from None
        except ValueError:
            after = "with records after it" if i < len(lines) - 1 else "a whole line, not one a kill tore"
            raise ConfigError(f"line {i + 1} of {str(path)!r} is damaged (not a JSON record), {after}; restore "
                              f"the file, or delete it to redo its work") from None
        good += len(line)
    if repair and good < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good)
    return records


def append(path: str | Path, records: Iterable[Mapping[str, object]]) -> None:
    text = "".join(dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write(path: str | Path, records: Iterable[Mapping[str, object]]) -> None:
    """Replace ``path`` with these records, atomically (a reader sees the old file or the new one)."""
    text = "".join(dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))

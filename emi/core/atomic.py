"""Whole-or-nothing file writes: a reader (or a resumed run) sees the old file or the new one,
never half of one. Every artifact emi writes, except append-only JSONL, goes through here."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from emi.core.errors import StoreError


def write_atomic(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then fsync and rename over ``path``; the temporary file never stays."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == 28:  # ENOSPC
            raise StoreError(f"the disk is full while writing {path.name} in {path.parent}; nothing "
                             f"half-written was left; free space and re-run the same command to resume") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    def w(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=1, default=str))

    write_atomic(path, w)

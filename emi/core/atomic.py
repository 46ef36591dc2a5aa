"""Whole-or-nothing file writes: a reader (or a resumed run) sees the old file or the new one,
never half of one. Every artifact emi writes, except append-only JSONL, goes through here."""

from __future__ import annotations

import json
import math
import numbers
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_folder(out: Path) -> Path:
    """A new temporary sibling of ``out`` to write a folder into and rename over it, with the mode
    ``mkdir`` would give (``tempfile.mkdtemp`` makes it 0700: a server running as another user
    could not read what is renamed from it)."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())
    return tmp


def readable(folder: Path) -> None:
    """Give ``folder`` and everything under it the modes a plain ``mkdir``/``open`` would (0755 and
    0644 under the usual umask), where a temporary folder or file was made private (0700/0600)."""
    mask = _umask()
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def plain(obj: Any) -> Any:
    """``obj`` with every non-finite number (an undefined AUROC, a rate over no answers) as None,
    so that the JSON emi writes is strict JSON: ``null``, never a bare ``NaN`` that strict parsers
    reject. Numpy scalars become Python numbers."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "ndim"):  # numpy arrays and scalars, torch tensors
        return plain(obj.tolist())
    if isinstance(obj, bool | numbers.Integral):
        return int(obj) if not isinstance(obj, bool | int) else obj
    if isinstance(obj, numbers.Real):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """Strict JSON of ``obj`` (see :func:`plain`); what emi writes as JSON goes through here."""
    return json.dumps(plain(obj), allow_nan=False, default=str, **kw)


def write_json(path: Path, obj: Any) -> None:
    def w(tmp: Path) -> None:
        tmp.write_text(dumps(obj, indent=1))

    write_atomic(path, w)

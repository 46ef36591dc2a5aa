"""One writer per folder: every command that writes a store or a run folder holds an exclusive
lock on it (``<folder>/.emi.lock``, an ``flock``), so two runs started on the same folder never
interleave their writes; the second is refused in one sentence naming the first. Re-entrant in
one process (a command and the library calls it makes lock the same folder). The lock dies
with its process, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from emi.core.errors import ConfigError

_held: dict[Path, tuple[int, int]] = {}  # folder -> (file descriptor, depth)


@contextlib.contextmanager
def exclusive(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for the duration of the block."""
    path = Path(folder).resolve()
    if path in _held:
        fd, depth = _held[path]
        _held[path] = (fd, depth + 1)
        try:
            yield path
        finally:
            fd, depth = _held[path]
            _held[path] = (fd, depth - 1)
        return
    writable(path)
    lock = path / ".emi.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(f"{str(path)!r} is being written by another emi run ({holder}); wait for it to "
                          f"finish, or give this run another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}".encode())
    _held[path] = (fd, 1)
    try:
        yield path
    finally:
        del _held[path]
        os.close(fd)  # releases the flock


def writable(path: Path) -> None:
    """Create ``path`` as a folder, or say in one sentence why it cannot be one."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{str(path)!r} is a file, not a folder; give --out a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {str(path)!r} ({exc.strerror}); choose another --out") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"the folder {str(path)!r} is not writable; choose another --out or fix its permissions")


def clear(folder: str | Path) -> None:
    """Empty a folder this process holds (``--overwrite``), keeping its lock."""
    import shutil

    path = Path(folder).resolve()
    if path not in _held:
        raise RuntimeError(f"clear({path}) outside an exclusive() block")
    for child in path.iterdir():
        if child.name == ".emi.lock":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()

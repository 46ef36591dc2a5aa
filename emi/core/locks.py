"""One writer per folder: every command that writes a store or a run folder holds an exclusive
lock on it (``<folder>/.emi.lock``, an ``flock``), so two runs started on the same folder never
interleave their writes; the second is refused in one sentence naming the first. Re-entrant in
one process (a command and the library calls it makes lock the same folder). The lock dies
with its process, and the lock file is removed on every exit path (success, refusal, exception,
Ctrl-C). A refusal raised inside the block (an :class:`EmiError`) also removes the folder when
the block created it and left nothing in it, so a refused command leaves the filesystem as it
found it. A lock file whose recorded process is gone but which is still held (a child process
that inherited it) is named with the command that clears it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from emi.core.errors import ConfigError, EmiError

LOCK = ".emi.lock"
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
    made = _missing_parents(path)
    writable(path)
    try:
        fd = _acquire(path)
    except BaseException:
        _remove_made(made)
        raise
    _held[path] = (fd, 1)
    refused = False
    try:
        yield path
    except EmiError:
        refused = True
        raise
    finally:
        del _held[path]
        with contextlib.suppress(OSError):
            os.unlink(path / LOCK)  # under the flock: a waiting opener finds a new inode (see _acquire)
        os.close(fd)  # releases the flock
        if refused:
            _remove_made(made)


def _acquire(path: Path) -> int:
    """The lock file's descriptor, flocked; refused in one sentence when another run holds it."""
    lock = path / LOCK
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(_held_message(path, holder)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder unlinked while we waited
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}".encode())
    return fd


def _held_message(path: Path, holder: str) -> str:
    m = re.match(r"pid (\d+)", holder)
    stale = ""
    if m and not _alive(int(m.group(1))):
        stale = (f" (pid {m.group(1)} is no longer running, so a process it started holds the lock: stop it, or "
                 f"if no emi run uses the folder clear the stale lock with: rm {str(path / LOCK)!r})")
    return (f"{str(path)!r} is being written by another emi run ({holder}); wait for it to finish, or give this "
            f"run another --out{stale}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _missing_parents(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first."""
    made = []
    p = path
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    return made


def _remove_made(made: list[Path]) -> None:
    """Remove the folders ``exclusive`` created, deepest first, as long as they are empty."""
    for p in made:
        try:
            p.rmdir()
        except OSError:
            return


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
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()

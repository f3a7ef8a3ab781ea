"""An exclusive lock on an output directory, so that two qfair processes never
write the same dump (or analysis) at once.

The lock is a small file (``.qfair.lock`` in a dump directory) holding the
owner's pid, host and start time, locked with ``flock``: the kernel releases
it when the owner exits, however it exits (kill -9 included), so a lock left
by a dead process is simply taken over. The file is removed on release. On
file systems without ``flock`` the file is created exclusively instead, and a
lock whose pid no longer runs on this host is detected as stale and removed.

A second process that finds the lock held stops at once with a one-line
:class:`LockError` naming the directory and the owner. Within one process
the lock is re-entrant (``qfair dump`` takes it before loading the model, the
writer takes it again).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from qfair.errors import DumpError

__all__ = ["LockError", "DirLock", "LOCK_NAME", "lock_dir"]

LOCK_NAME = ".qfair.lock"

_held: dict[str, list[Any]] = {}  # real path of the lock file -> [DirLock, depth]
_guard = threading.Lock()


class LockError(DumpError):
    """The directory is being written by another process (or cannot be locked)."""


def _owner() -> dict[str, Any]:
    from datetime import datetime, timezone

    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:200]}


def _read_owner(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: Any) -> bool:
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class DirLock:
    """An exclusive lock held through the file ``path`` (see the module doc).

    ``what`` names the directory in messages ("dump", "analysis");
    ``directory`` is what the lock protects (default: the lock file's parent).
    """

    def __init__(self, path: str | os.PathLike, what: str = "directory", directory: str | os.PathLike | None = None):
        self.path = Path(path)
        self.what = what
        self.directory = Path(directory) if directory is not None else self.path.parent
        self._fd: int | None = None
        self._key: str | None = None
        self._flock = True
        self.created_dir = False  # remove the directory on release if it is then empty

    def _message(self, info: dict[str, Any]) -> str:
        who = (f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}" if info
               else "another process")
        return (f"{self.directory}: this {self.what} is being written by another qfair process ({who}); "
                f"wait for it to finish or stop it (lock file {self.path})")

    def acquire(self) -> DirLock:
        key = os.path.realpath(self.path)
        with _guard:
            held = _held.get(key)
            if held is not None:
                held[1] += 1
                self._key = key
                return held[0]
            self._acquire()
            self._key = key
            _held[key] = [self, 1]
        return self

    def _acquire(self) -> None:
        import fcntl

        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as e:
                raise LockError(f"{self.directory}: cannot write here ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockError(self._message(_read_owner(self.path))) from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    self._flock = False
                    return self._acquire_exclusive()
                raise LockError(f"{self.path}: cannot lock ({e.strerror or e})") from None
            # the file we locked must still be the one at the path (a releasing owner unlinks it)
            try:
                st, now = os.fstat(fd), os.stat(self.path)
            except FileNotFoundError:
                os.close(fd)
                continue
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(_owner()).encode("utf-8") + b"\n")
            self._fd = fd
            return None
        raise LockError(f"{self.path}: could not take the lock (the lock file keeps changing)")

    def _acquire_exclusive(self) -> None:
        """Without flock: create the file exclusively; take over a lock whose owner is dead."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = _read_owner(self.path)
                if info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
                    self.path.unlink(missing_ok=True)  # stale: its owner is gone
                    continue
                raise LockError(self._message(info)) from None
            except OSError as e:
                raise LockError(f"{self.directory}: cannot write here ({e.strerror or e})") from None
            os.write(fd, json.dumps(_owner()).encode("utf-8") + b"\n")
            self._fd = fd
            return
        raise LockError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        with _guard:
            held = _held.get(self._key or "")
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del _held[self._key]
            lock = held[0]
            if lock._fd is not None:
                try:
                    lock.path.unlink(missing_ok=True)  # while still holding it (see _acquire)
                finally:
                    os.close(lock._fd)
                    lock._fd = None
                if lock.created_dir:
                    try:
                        lock.directory.rmdir()  # only succeeds when nothing was written
                    except OSError:
                        pass

    @property
    def held(self) -> bool:
        return self._key is not None and self._key in _held

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_dir(directory: str | os.PathLike, what: str = "dump") -> DirLock:
    """Create ``directory`` if needed and lock it (``directory/.qfair.lock``);
    LockError when another process holds it or the directory is not writable."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise LockError(f"{d}: exists and is not a directory")
    created = not d.exists()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LockError(f"{d}: cannot create the directory ({e.strerror or e})") from None
    lock = DirLock(d / LOCK_NAME, what, d)
    try:
        got = lock.acquire()
    except BaseException:
        if created:
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    if got is lock:
        lock.created_dir = created
    return got

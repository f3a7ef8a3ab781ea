"""File helpers shared by everything that writes or verifies files: atomic
writes (temp file, fsync, rename, fsync of the directory) and sha256."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

_sha_memo: dict[tuple[str, int, int], str] = {}


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after a rename into it) to disk, where the
    platform allows opening directories; elsewhere a no-op."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, *, memo: bool = False, chunk: int = 1 << 22,
                stop: Any = None) -> str | None:
    """sha256 of a file (hex). ``memo=True`` remembers the answer per (path,
    size, mtime) within the process (for large inputs hashed repeatedly).
    ``stop``: an event (``is_set()``) that abandons the hashing between
    blocks; the answer is then None."""
    p = Path(path)
    key = None
    if memo:
        p = p.resolve()
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns)
        hit = _sha_memo.get(key)
        if hit is not None:
            return hit
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            if stop is not None and stop.is_set():
                return None
            h.update(block)
    digest = h.hexdigest()
    if key is not None:
        _sha_memo[key] = digest
    return digest


def _file_mode() -> int:
    # mkstemp creates 0600 files; outputs are shared like any other file: 0666 & ~umask.
    # Read the umask without changing it where the OS allows (os.umask is process-wide).
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def temp_path(final: Path) -> Path:
    """A new empty temp file beside ``final`` (same file system, so a rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)
    return Path(name)


def atomic_write_bytes(final: Path, data: bytes) -> None:
    """Write ``data`` to ``final`` via temp file + fsync + rename: a reader sees
    the old file or the complete new one, never a torn write."""
    final = Path(final)
    tmp = temp_path(final)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def atomic_write_text(final: Path, text: str) -> None:
    atomic_write_bytes(final, text.encode("utf-8"))

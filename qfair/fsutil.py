"""File helpers shared by everything that writes or verifies files: atomic
writes (temp file, fsync, rename, fsync of the directory) and file digests
(sha256, and xxh3-128 for the large logits shards: twelve times faster)."""
from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash

from qfair.errors import QfairError

# Digests a manifest may record for a file, by their manifest key. sha256 for
# every file; xxh3_128 (non-cryptographic, made to catch accidental change) for
# logits shards, where it lets verification keep pace with the analysis.
DIGESTS = {"sha256": hashlib.sha256, "xxh3_128": xxhash.xxh3_128}

_digest_memo: dict[tuple[str, str, int, int], str] = {}


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


def sha256_file(path: str | os.PathLike, *, memo: bool = False, chunk: int = 1 << 24,
                stop: Any = None) -> str | None:
    """sha256 of a file (hex); see :func:`file_digest`."""
    return file_digest(path, "sha256", memo=memo, chunk=chunk, stop=stop)


def file_digest(path: str | os.PathLike, algorithm: str, *, memo: bool = False, chunk: int = 1 << 24,
                stop: Any = None) -> str | None:
    """A digest (hex) of a file, ``algorithm`` one of :data:`DIGESTS`.
    ``memo=True`` remembers the answer per (path, size, mtime) within the
    process (for large inputs hashed repeatedly). ``stop``: an event
    (``is_set()``) that abandons the hashing between blocks; the answer is
    then None."""
    p = Path(path)
    key = None
    if memo:
        p = p.resolve()
        st = p.stat()
        key = (algorithm, str(p), st.st_size, st.st_mtime_ns)
        hit = _digest_memo.get(key)
        if hit is not None:
            return hit
    h = DIGESTS[algorithm]()
    with open(p, "rb") as f:
        blocks = _mapped_blocks(f, chunk)
        if blocks is None:  # not mappable (empty, a pipe, ...): plain reads
            blocks = iter(lambda: f.read(chunk), b"")
        try:
            for block in blocks:
                if stop is not None and stop.is_set():
                    return None
                h.update(block)
        finally:
            if hasattr(blocks, "close"):
                blocks.close()  # unmaps now, not when the generator is collected
    digest = h.hexdigest()
    if key is not None:
        _digest_memo[key] = digest
    return digest


class StreamedDigest:
    """A digest fed a file's bytes by the reader that streams them (in order,
    each byte once) instead of by a read of its own; :attr:`nbytes` counts the
    bytes fed, so the digest stands for the whole file once it equals the size."""

    def __init__(self, algorithm: str):
        self._h = DIGESTS[algorithm]()
        self.nbytes = 0

    def update(self, data: Any) -> None:
        self._h.update(data)
        self.nbytes += memoryview(data).nbytes

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _mapped_blocks(f: Any, chunk: int) -> Iterator[memoryview] | None:
    """The file's bytes as consecutive views of a read-only memory map, or None
    when it cannot be mapped. Hashing the mapped pages saves the copy into a
    read buffer: a fifth of the CPU time of hashing a dump's shards. Each
    block's pages are handed back once the next is asked for (MADV_DONTNEED),
    so the process holds one block of the file, not all of it."""
    try:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None

    step = -(-max(1, chunk) // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages: madvise needs aligned starts

    def views() -> Iterator[memoryview]:
        try:
            if hasattr(m, "madvise"):
                m.madvise(mmap.MADV_SEQUENTIAL)
            with memoryview(m) as whole:
                for start in range(0, len(m), step):
                    with whole[start:start + step] as block:
                        yield block
                    if hasattr(mmap, "MADV_DONTNEED"):
                        m.madvise(mmap.MADV_DONTNEED, start, min(step, len(m) - start))
        finally:
            m.close()

    return views()


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


# ---------------------------------------------------------------------------
# user-given paths: names that become path components, outputs vs inputs
# ---------------------------------------------------------------------------

class PathError(QfairError):
    """A user-given path or name cannot be used as given; the message names it."""


def expand_user(path: str | os.PathLike) -> Path:
    """``~`` / ``~user`` expanded as a shell does: left as it is when there is no
    such user or home directory (pathlib raises RuntimeError there)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return Path(path)


def resolved(path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` made absolute with every symlink followed (missing tails kept);
    PathError instead of the RuntimeError / OSError of a symlink loop."""
    if "\x00" in os.fspath(path):
        raise PathError(f"{what} {os.fspath(path)!r}: contains a NUL character, which no path can hold")
    try:
        return expand_user(path).resolve()
    except (RuntimeError, OSError) as e:
        why = "a symbolic link loop" if isinstance(e, RuntimeError) or getattr(e, "errno", None) == 40 \
            else (getattr(e, "strerror", None) or str(e))
        raise PathError(f"{what} {os.fspath(path)!r}: cannot be resolved ({why})") from None


def path_component(name: object, what: str = "name") -> str:
    """``name`` when it can be used as one directory or file name inside an
    output directory: a non-empty string without path separators or NUL, not
    '.' / '..', not starting with '.' (qfair's own hidden files) and at most
    255 bytes. PathError naming ``what`` otherwise."""
    if not isinstance(name, str) or not name:
        raise PathError(f"{what} is {name!r}, expected a non-empty name")
    bad = None
    if "\x00" in name:
        bad = "contains a NUL character"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        bad = "contains a path separator"
    elif name.startswith("."):
        bad = "starts with '.' ('.', '..' and hidden names are not allowed)"
    elif len(os.fsencode(name)) > 255:
        bad = "is longer than 255 bytes"
    elif Path(name).is_absolute() or Path(name).name != name:
        bad = "is not a single path component"
    if bad is not None:
        raise PathError(f"{what} is {name!r}, which {bad}; expected a plain name usable as a directory name")
    return name


def child_path(root: str | os.PathLike, *names: str, what: str = "name") -> Path:
    """``root / names[0] / ...`` after checking each name (:func:`path_component`)
    and that the result, symlinks followed, stays inside ``root``."""
    p = Path(root)
    for n in names:
        p = p / path_component(n, what)
    r, c = resolved(root, "output directory"), resolved(p, what)
    if r != c and r not in c.parents:
        raise PathError(f"{what} {'/'.join(names)!r}: resolves to {c}, outside the output directory {r}")
    return p


def check_not_input(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None],
                    option: str = "--out") -> Path:
    """Refuse an output that resolves (symlinks followed) to one of the command's
    inputs, or to a directory holding one (writing or cleaning it would destroy
    the input). ``inputs``: option name -> path (None: not given). Returns the
    resolved output. Call before anything is deleted or written."""
    o = resolved(out, option)
    for name, p in inputs.items():
        if p is None:
            continue
        i = resolved(p, name)
        if o == i:
            raise PathError(f"{option} {os.fspath(out)!r} resolves to {i}, which is this command's {name}; "
                            "write the output somewhere else")
        if o in i.parents:
            raise PathError(f"{option} {os.fspath(out)!r} resolves to {o}, which holds this command's {name} "
                            f"({i}); write the output somewhere else")
    return o

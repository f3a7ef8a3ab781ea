"""Reading large files around the page cache.

An analysis reads each logits shard once. From a cold disk, reading it
through the page cache (a memory map, or ``read()``) makes the kernel take a
fresh page for every 4 KiB and the process touch it. On virtual machines whose
host reclaims free guest memory, that first touch costs more CPU than the
analysis of the bytes: 2-6 CPU seconds per 4 GB on the machine the benchmarks
ran on, against 0.4 s for the same bytes read here. Reading with ``O_DIRECT``
into a few buffers that are reused lets the disk write into memory the process
already holds, and leaves the rest of the machine's page cache alone (a 77 GB
dump does not evict it).

A file already in the page cache is better read through it (memory speed, no
disk): :func:`read_direct` decides by :func:`resident_fraction`. The
environment variable ``QFAIR_DIRECT_READ`` overrides the choice: ``auto``
(default), ``always`` or ``never``.

Where the file system refuses ``O_DIRECT``, :class:`DirectFile` reads the same
spans with plain reads: slower on a cold disk, the same bytes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
from pathlib import Path

import numpy as np

from qfair.errors import QfairError

__all__ = ["ALIGN", "BufferPool", "DirectFile", "aligned_empty", "direct_read_mode", "read_direct", "resident_fraction"]

#: alignment of O_DIRECT offsets, lengths and buffer addresses (the largest
#: logical block size in common use; 512-byte devices accept it too)
ALIGN = 4096

#: files smaller than this are read through the page cache whatever their
#: residency: a reader thread and its buffers cost more than they save
MIN_DIRECT_BYTES = 16 << 20

#: ``auto`` reads a file directly when less than this fraction of it is cached
MAX_RESIDENT = 0.5

_MODES = ("auto", "always", "never")


def direct_read_mode() -> str:
    """``QFAIR_DIRECT_READ``: ``auto`` (default), ``always`` or ``never``."""
    raw = os.environ.get("QFAIR_DIRECT_READ", "").strip().lower() or "auto"
    if raw not in _MODES:
        raise QfairError(f"QFAIR_DIRECT_READ is {raw!r}, expected one of {', '.join(_MODES)}")
    return raw


def _mincore() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.mincore
    except (OSError, AttributeError):  # pragma: no cover - no libc mincore (not Linux/BSD)
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_MINCORE = _mincore()


#: :func:`resident_fraction` asks about this many evenly spread runs of pages of a large file
_SAMPLE_RUNS, _SAMPLE_PAGES = 64, 16


def resident_fraction(path: str | os.PathLike, exact: bool = False) -> float | None:
    """The fraction of a file's pages that are in the page cache now (``mincore``),
    or None where that cannot be told (no mincore, an empty or unmappable file).

    A file of more than 1,024 pages is sampled (64 evenly spread runs of 16
    pages) unless ``exact``: asking about every page of a 400 MB shard costs 7 ms,
    and the answer only has to be compared with a half."""
    if _MINCORE is None:  # pragma: no cover
        return None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return None
            m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    try:
        page = mmap.PAGESIZE
        pages = -(-size // page)
        if exact or pages <= _SAMPLE_RUNS * _SAMPLE_PAGES:
            runs = [(0, pages)]
        else:
            starts = np.linspace(0, pages - _SAMPLE_PAGES, _SAMPLE_RUNS).astype(np.int64)
            runs = [(int(s), _SAMPLE_PAGES) for s in starts]
        vec = np.zeros(max(n for _, n in runs), dtype=np.uint8)
        view = np.frombuffer(m, dtype=np.uint8)
        resident = asked = 0
        try:
            for first, n in runs:
                length = min(n * page, size - first * page)
                if _MINCORE(view.ctypes.data + first * page, length, vec.ctypes.data) != 0:
                    return None
                k = -(-length // page)
                resident += int(np.count_nonzero(vec[:k] & 1))
                asked += k
        finally:
            del view
        return resident / asked
    finally:
        m.close()


def read_direct(path: str | os.PathLike) -> bool:
    """Whether a large file read once should be read with O_DIRECT here
    (:func:`direct_read_mode`; ``auto``: where the OS has O_DIRECT, a file of at
    least :data:`MIN_DIRECT_BYTES` with less than :data:`MAX_RESIDENT` of it in
    the page cache)."""
    mode = direct_read_mode()
    if mode != "auto":
        return mode == "always"
    if not hasattr(os, "O_DIRECT"):  # macOS, Windows: reading into buffers would only add a copy
        return False
    try:
        if os.stat(path).st_size < MIN_DIRECT_BYTES:
            return False
    except OSError:
        return False  # the memory-mapped reader reports the error in its own words
    frac = resident_fraction(path)
    return frac is not None and frac < MAX_RESIDENT


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 array of at least ``nbytes`` (rounded up to
    :data:`ALIGN`) whose first byte sits at an :data:`ALIGN`-aligned address."""
    n = -(-max(int(nbytes), 1) // ALIGN) * ALIGN
    raw = np.empty(n + ALIGN, dtype=np.uint8)
    skip = (-raw.ctypes.data) % ALIGN
    return raw[skip:skip + n]


class BufferPool:
    """Aligned buffers handed back for reuse, shared by the readers of one
    stream: the shards of a dump are read one after another into the same
    memory, which is touched (and, on a virtual machine, backed) once."""

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []

    def get(self, nbytes: int) -> np.ndarray:
        """A free buffer of at least ``nbytes`` (the largest free one, grown if short)."""
        if self._free:
            self._free.sort(key=len)
            buf = self._free.pop()
            if len(buf) >= nbytes:
                return buf
        return aligned_empty(nbytes)

    def put(self, buf: np.ndarray) -> None:
        self._free.append(buf)


class DirectFile:
    """A file opened for ``O_DIRECT`` reads of byte spans into aligned buffers;
    plain reads where the file system refuses ``O_DIRECT`` (:attr:`direct`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        flag = getattr(os, "O_DIRECT", 0)
        self.direct = bool(flag)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | flag)
        except OSError as e:
            if not flag or e.errno != errno.EINVAL:
                raise
            self._fd, self.direct = os.open(self.path, os.O_RDONLY), False
        self.size = os.fstat(self._fd).st_size

    @staticmethod
    def span_bytes(start: int, stop: int) -> int:
        """Bytes of buffer :meth:`read_span` needs for file bytes [start, stop)."""
        lo = start // ALIGN * ALIGN
        return -(-stop // ALIGN) * ALIGN - lo

    @staticmethod
    def most_span_bytes(n: int) -> int:
        """The most :meth:`span_bytes` of any ``n`` consecutive bytes (a buffer that fits wherever they start)."""
        return -(-n // ALIGN) * ALIGN + ALIGN

    def read_span(self, start: int, stop: int, buf: np.ndarray) -> int:
        """Read file bytes [start, stop) into ``buf`` (aligned, at least
        :meth:`span_bytes` long): the aligned span around them is read, and the
        return value is where byte ``start`` lands in ``buf``. OSError if the
        file ends before ``stop``."""
        lo = start // ALIGN * ALIGN
        need = stop - lo
        want = self.span_bytes(start, stop)
        mv = memoryview(buf)[:want]
        got = 0
        while got < need:
            try:
                k = os.preadv(self._fd, [mv[got:]], lo + got)
            except OSError as e:
                if e.errno != errno.EINVAL or not self.direct:
                    raise
                self._reopen_plain()  # a file system that takes the flag but not the read
                continue
            if k <= 0:
                raise OSError(errno.EIO, f"{self.path}: ends at byte {lo + got}, expected at least {stop}")
            got += k
            if got % ALIGN and got < need and self.direct:
                self._reopen_plain()  # a short read off the alignment: finish with plain reads
        return start - lo

    def read_plain(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) with a plain read (a header, a tail: small)."""
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(stop - start)
        if len(data) != stop - start:
            raise OSError(errno.EIO, f"{self.path}: ends at byte {start + len(data)}, expected at least {stop}")
        return data

    def _reopen_plain(self) -> None:
        os.close(self._fd)
        self._fd, self.direct = os.open(self.path, os.O_RDONLY), False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

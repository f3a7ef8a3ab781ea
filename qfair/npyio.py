"""The rows of `.npy` files, read without holding the whole file.

Two readers with one interface (``rows``, ``take``, ``prefetch``,
``release_until``, ``close``): :class:`NpyRows` maps the file;
:class:`DirectRows` reads the rows asked for next, in order, on a thread of its
own, with ``O_DIRECT`` into two reused buffers (:mod:`qfair.directio`; for files
not in the page cache).

``np.load(..., mmap_mode="r")`` keeps every page it has touched resident until
the array is dropped, so streaming a dump larger than RAM through it grows the
process without bound. :class:`NpyRows` maps the file itself and, after rows
have been consumed, tells the kernel it will not need their pages again
(``madvise(MADV_DONTNEED)`` on a read-only file mapping simply drops them; a
later read faults them back in from the file).
"""
from __future__ import annotations

import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from qfair.directio import BufferPool, DirectFile
from qfair.errors import QfairError

__all__ = ["NpyRows", "DirectRows", "DirectRead", "NpyHeader", "NpyFormatError", "open_npy_rows",
           "open_direct_rows", "read_npy_header"]

_PAGE = mmap.PAGESIZE


class NpyFormatError(QfairError):
    """A file that is not a readable 2-D C-order .npy array."""


@dataclass
class NpyRows:
    """A read-only [rows, cols] array mapped from a .npy file."""

    path: Path
    array: np.ndarray
    _map: mmap.mmap | None = field(repr=False)
    _data_offset: int = 0
    _released: int = 0  # bytes of the mapping already handed back

    @property
    def rows(self) -> int:
        return int(self.array.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def take(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop): a view of the mapping."""
        return self.array[start:stop]

    def release_until(self, row: int) -> None:
        """Drop the pages holding rows [0, row) from this process's memory."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        row_bytes = self.array.strides[0]
        end = (self._data_offset + row * row_bytes) // _PAGE * _PAGE
        if end > self._released:
            self._map.madvise(mmap.MADV_DONTNEED, self._released, end - self._released)
            self._released = end

    def prefetch(self, start: int, stop: int) -> None:
        """Ask the kernel to start reading rows [start, stop) now (MADV_WILLNEED),
        so that on a cold disk the next chunk arrives while this one is computed."""
        if self._map is None or not hasattr(mmap, "MADV_WILLNEED"):
            return
        start, stop = max(0, int(start)), min(self.rows, int(stop))
        if stop <= start:
            return
        row_bytes = self.array.strides[0]
        lo = (self._data_offset + start * row_bytes) // _PAGE * _PAGE
        hi = min(len(self._map), self._data_offset + stop * row_bytes)
        self._map.madvise(mmap.MADV_WILLNEED, lo, hi - lo)

    def close(self) -> None:
        """Unmap the file. The array must not be used afterwards."""
        self.array = np.empty((0, 0), dtype=self.array.dtype)
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still exported; the GC unmaps it later
                pass
            self._map = None


_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True)
class NpyHeader:
    """What a .npy header says: shape, dtype, and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # bytes before the data

    @property
    def data_bytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * self.dtype.itemsize


def _plain_record(descr: object) -> bool:
    """A structured descr of named fields, each a plain dtype string with an optional
    shape: ``[('logprob', '<f2', (128,)), ('id', '<i4', (128,)), ('tail', '<f4')]``
    (the records of a top-K dump). Nothing nested, nothing that could hold objects."""
    if not isinstance(descr, list) or not descr or len(descr) > 64:
        return False
    for f in descr:
        if not isinstance(f, tuple) or len(f) not in (2, 3) or not isinstance(f[0], str) or not f[0] \
                or not isinstance(f[1], str):
            return False
        if len(f) == 3 and not (isinstance(f[2], tuple) and all(type(x) is int and x >= 0 for x in f[2])):
            return False
        try:
            if np.dtype(f[1]).fields is not None or np.dtype(f[1]).hasobject:
                return False
        except Exception:  # noqa: BLE001
            return False
    return True


def read_npy_header(fh: BinaryIO, path: str | os.PathLike = "") -> NpyHeader:
    """Parse a .npy header from an open binary file, strictly: magic, version
    1-3, a dict literal with exactly ``descr``, ``fortran_order`` and ``shape``.

    Never evaluates code (``ast.literal_eval`` of at most 64 KiB, as numpy
    itself), and every way the header can be damaged ends in
    :class:`NpyFormatError` naming the file: numpy's own reader lets the
    tokenizer's errors escape on a garbled header.
    """
    import ast
    import struct

    where = f"{path}: " if path else ""
    magic = fh.read(8)
    if len(magic) < 8 or magic[:6] != _MAGIC:
        raise NpyFormatError(f"{where}not a .npy file (bad magic bytes)")
    major, minor = magic[6], magic[7]
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise NpyFormatError(f"{where}unsupported .npy version {major}.{minor}")
    size_fmt = "<H" if major == 1 else "<I"
    raw = fh.read(struct.calcsize(size_fmt))
    if len(raw) < struct.calcsize(size_fmt):
        raise NpyFormatError(f"{where}truncated .npy header")
    (hlen,) = struct.unpack(size_fmt, raw)
    if hlen > 65536:
        raise NpyFormatError(f"{where}.npy header of {hlen} bytes (numpy writes a few hundred)")
    header = fh.read(hlen)
    if len(header) < hlen:
        raise NpyFormatError(f"{where}truncated .npy header")
    try:
        text = header.decode("utf-8" if major == 3 else "latin1")
        d = ast.literal_eval(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is a damaged header
        raise NpyFormatError(f"{where}garbled .npy header ({type(e).__name__})") from None
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise NpyFormatError(f"{where}.npy header is not a dict with keys descr, fortran_order, shape")
    shape, fortran, descr = d["shape"], d["fortran_order"], d["descr"]
    if not isinstance(shape, tuple) or not all(type(x) is int and x >= 0 for x in shape):
        raise NpyFormatError(f"{where}.npy header shape {shape!r} is not a tuple of non-negative integers")
    if not isinstance(fortran, bool):
        raise NpyFormatError(f"{where}.npy header fortran_order {fortran!r} is not a boolean")
    if not isinstance(descr, str) and not _plain_record(descr):
        raise NpyFormatError(f"{where}.npy header descr {str(descr)[:80]!r} is neither a plain dtype string nor a "
                             "record of named plain fields (nested or object arrays are not read)")
    try:
        dtype = np.dtype(descr)
    except Exception:  # noqa: BLE001
        raise NpyFormatError(f"{where}.npy header descr {descr!r} is not a dtype") from None
    if dtype.hasobject:
        raise NpyFormatError(f"{where}object arrays are not read (they would execute pickles)")
    return NpyHeader(tuple(shape), dtype, fortran, 8 + struct.calcsize(size_fmt) + hlen)


def _rows_header(fh: BinaryIO, path: Path) -> NpyHeader:
    """The header of a 2-D C-order .npy file whose data is all there."""
    h = read_npy_header(fh, path)
    if h.fortran:
        raise NpyFormatError(f"{path}: Fortran-order arrays are not supported; rows must be contiguous")
    if len(h.shape) != 2:
        raise NpyFormatError(f"{path}: expected a 2-D [rows, vocab] array, got shape {h.shape}")
    size = os.fstat(fh.fileno()).st_size
    if size < h.offset + h.data_bytes:
        raise NpyFormatError(
            f"{path}: truncated: header promises {h.data_bytes} data bytes, file holds {size - h.offset}"
        )
    return h


def open_npy_rows(path: str | os.PathLike) -> NpyRows:
    """Map a 2-D C-order .npy file without reading its data."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            h = _rows_header(fh, path)
            shape, dtype, offset = h.shape, h.dtype, h.offset
            if h.data_bytes == 0:
                return NpyRows(path, np.empty(shape, dtype=dtype), None, offset)
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except NpyFormatError:
        raise
    except (ValueError, OSError) as exc:
        raise NpyFormatError(f"{path}: not a readable .npy file ({exc})") from exc
    array = np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
    return NpyRows(path, array, mm, offset)


@dataclass(frozen=True)
class DirectRead:
    """A row block to be read by :class:`DirectRows`: ``path``, and a ``digest``
    (an object with ``update(bytes)``) that receives every byte of the file in
    order as the rows are read (the header first), or None."""

    path: Path
    digest: Any = None


@dataclass
class _Slot:
    """One reused buffer and the rows [start, stop) it holds or is being filled with."""

    buf: np.ndarray | None = None  # from the pool while the slot holds rows
    span: tuple[int, int] | None = None
    job: Future[int] | None = None  # resolves to where row ``start`` begins in ``buf``


class DirectRows:
    """The rows of a 2-D .npy file read with ``O_DIRECT`` (:class:`DirectFile`)
    into two reused buffers by a thread of its own: :meth:`prefetch` starts
    reading the rows asked for next, :meth:`take` waits for them and returns a
    view that stays valid until rows after them are taken or
    :meth:`release_until` passes them. Rows are read in increasing order;
    asking for rows out of order works (it reads them again) but the digest
    then stops (:attr:`digest_complete` stays False).

    ``digest``: fed the whole file in order, header and any bytes after the
    data included, as the rows are read, once the last row has been read.
    ``pool``: where the buffers come from and go back to (a stream shares one
    across the files of a side, :class:`~qfair.directio.BufferPool`).
    """

    _SLOTS = 2

    def __init__(self, path: str | os.PathLike, digest: Any = None, pool: BufferPool | None = None):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                h = _rows_header(fh, self.path)
            self._file = DirectFile(self.path)
        except NpyFormatError:
            raise
        except (ValueError, OSError) as exc:
            raise NpyFormatError(f"{self.path}: not a readable .npy file ({exc})") from exc
        self.header = h
        self.dtype = h.dtype
        self._row_bytes = h.shape[1] * h.dtype.itemsize
        self._data_end = h.offset + h.data_bytes
        self._digest = digest
        self._buffers = pool if pool is not None else BufferPool()
        self._hashed = 0  # bytes of the file fed to the digest so far, in order
        self._slots: list[_Slot] = []
        self._reader: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        if digest is not None:
            self._feed(self._file.read_plain(0, h.offset), 0)
            self._tail_if_done()

    @property
    def rows(self) -> int:
        return int(self.header.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.header.shape)

    @property
    def direct(self) -> bool:
        """Whether the reads bypass the page cache (False: the file system refused O_DIRECT)."""
        return self._file.direct

    @property
    def digest_complete(self) -> bool:
        """Whether the digest has been fed every byte of the file, in order."""
        return self._digest is not None and self._hashed == self._file.size

    def prefetch(self, start: int, stop: int) -> None:
        """Start reading rows [start, stop) on the reader thread, when a buffer is free."""
        start, stop = max(0, int(start)), min(self.rows, int(stop))
        if stop <= start or self._slot_for(start, stop) is not None:
            return
        free = [s for s in self._slots if s.span is None]
        if free:
            self._start(free[0], start, stop)
        elif len(self._slots) < self._SLOTS:
            self._slots.append(_Slot())
            self._start(self._slots[-1], start, stop)

    def take(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop), read (or waited for) now."""
        start, stop = max(0, int(start)), min(self.rows, int(stop))
        cols = self.header.shape[1]
        if stop <= start:
            return np.empty((0, cols), dtype=self.dtype)
        slot = self._slot_for(start, stop)
        if slot is None:
            for s in self._slots:  # the rows before these are done with; so is any other span
                self._free(s)
            self.prefetch(start, stop)
            slot = self._slot_for(start, stop)
            assert slot is not None
        assert slot.job is not None and slot.span is not None
        try:
            first = slot.job.result() + (start - slot.span[0]) * self._row_bytes
        except OSError as e:  # an I/O error, a file cut short since it was opened
            raise NpyFormatError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        for s in self._slots:  # spans wholly before these rows are done with
            if s is not slot and s.span is not None and s.span[1] <= start:
                self._free(s)
        data = slot.buf[first:first + (stop - start) * self._row_bytes]
        return data.view(self.dtype).reshape(stop - start, cols)

    def release_until(self, row: int) -> None:
        """Rows [0, row) are done with: their buffers may be reused."""
        for s in self._slots:
            if s.span is not None and s.span[1] <= row:
                self._free(s)

    def close(self) -> None:
        """Stop reading and close the file (waits for a read in flight)."""
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader = None
        for s in self._slots:
            self._free(s)
        self._slots = []
        self._file.close()

    # -- internals -----------------------------------------------------------
    def _slot_for(self, start: int, stop: int) -> _Slot | None:
        for s in self._slots:
            if s.span is not None and s.span[0] <= start and stop <= s.span[1]:
                return s
        return None

    def _free(self, slot: _Slot) -> None:
        if slot.job is not None:
            try:
                slot.job.result()
            except Exception:  # noqa: BLE001 - a read error is raised by the take() that wants those rows
                pass
        if slot.buf is not None:
            self._buffers.put(slot.buf)
        slot.buf, slot.span, slot.job = None, None, None

    def _start(self, slot: _Slot, start: int, stop: int) -> None:
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qfair-read")
        slot.buf = self._buffers.get(DirectFile.most_span_bytes((stop - start) * self._row_bytes))
        slot.span = (start, stop)
        slot.job = self._reader.submit(self._read, slot, start, stop)

    def _read(self, slot: _Slot, start: int, stop: int) -> int:
        """On the reader thread: rows [start, stop) into ``slot``; feeds the digest."""
        lo = self.header.offset + start * self._row_bytes
        hi = self.header.offset + stop * self._row_bytes
        first = self._file.read_span(lo, hi, slot.buf)
        if self._digest is not None:
            self._feed(slot.buf[first:first + hi - lo], lo)
            self._tail_if_done()
        return first

    def _feed(self, data: Any, at: int) -> None:
        """Feed the file's bytes [at, at + len) to the digest: only the part not yet
        fed, and nothing once a gap (rows skipped) has made the digest unusable."""
        end = at + len(data)
        with self._lock:
            if at <= self._hashed < end:
                self._digest.update(memoryview(data)[self._hashed - at:])
                self._hashed = end

    def _tail_if_done(self) -> None:
        if self._hashed == self._data_end and self._file.size > self._data_end:
            self._feed(self._file.read_plain(self._data_end, self._file.size), self._data_end)


def open_direct_rows(path: str | os.PathLike, digest: Any = None, pool: BufferPool | None = None) -> DirectRows:
    """Open a 2-D C-order .npy file for reading its rows with O_DIRECT (:class:`DirectRows`)."""
    return DirectRows(path, digest, pool)

"""Memory-mapped `.npy` row blocks whose pages can be handed back to the OS.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qfair.errors import QfairError

__all__ = ["NpyRows", "NpyHeader", "NpyFormatError", "open_npy_rows", "read_npy_header"]

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


def open_npy_rows(path: str | os.PathLike) -> NpyRows:
    """Map a 2-D C-order .npy file without reading its data."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            h = read_npy_header(fh, path)
            shape, dtype, offset = h.shape, h.dtype, h.offset
            if h.fortran:
                raise NpyFormatError(f"{path}: Fortran-order arrays are not supported; rows must be contiguous")
            if len(shape) != 2:
                raise NpyFormatError(f"{path}: expected a 2-D [rows, vocab] array, got shape {shape}")
            nbytes = h.data_bytes
            size = os.fstat(fh.fileno()).st_size
            if size < offset + nbytes:
                raise NpyFormatError(
                    f"{path}: truncated: header promises {nbytes} data bytes, file holds {size - offset}"
                )
            if nbytes == 0:
                return NpyRows(path, np.empty(shape, dtype=dtype), None, offset)
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except NpyFormatError:
        raise
    except (ValueError, OSError) as exc:
        raise NpyFormatError(f"{path}: not a readable .npy file ({exc})") from exc
    array = np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
    return NpyRows(path, array, mm, offset)

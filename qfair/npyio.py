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

import numpy as np

__all__ = ["NpyRows", "NpyFormatError", "open_npy_rows"]

_PAGE = mmap.PAGESIZE


class NpyFormatError(ValueError):
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

    def close(self) -> None:
        """Unmap the file. The array must not be used afterwards."""
        self.array = np.empty((0, 0), dtype=self.array.dtype)
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view is still exported; the GC unmaps it later
                pass
            self._map = None


def open_npy_rows(path: str | os.PathLike) -> NpyRows:
    """Map a 2-D C-order .npy file without reading its data."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:  # pragma: no cover - numpy raises first
                raise NpyFormatError(f"{path}: unsupported .npy version {version}")
            offset = fh.tell()
            if dtype.hasobject:
                raise NpyFormatError(f"{path}: object arrays are not read (they would execute pickles)")
            if fortran:
                raise NpyFormatError(f"{path}: Fortran-order arrays are not supported; rows must be contiguous")
            if len(shape) != 2:
                raise NpyFormatError(f"{path}: expected a 2-D [rows, vocab] array, got shape {shape}")
            nbytes = int(np.prod(shape)) * dtype.itemsize
            size = os.fstat(fh.fileno()).st_size
            if size < offset + nbytes:
                raise NpyFormatError(
                    f"{path}: truncated: header promises {nbytes} data bytes, file holds {size - offset}"
                )
            if nbytes == 0:
                return NpyRows(path, np.empty(shape, dtype=dtype), None, offset)
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (ValueError, OSError) as exc:
        if isinstance(exc, NpyFormatError):
            raise
        raise NpyFormatError(f"{path}: not a readable .npy file ({exc})") from exc
    array = np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)
    return NpyRows(path, array, mm, offset)

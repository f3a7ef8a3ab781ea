"""The integer grid of weight-only quantization.

A weight matrix ``W`` (rows = output features, columns = input features) is cut
along its input dimension into groups of ``group_size`` columns (``-1``: one
group spanning the whole row, i.e. per output channel). Each (row, group) has
a float ``scale`` and an integer ``zero`` point; a weight ``w`` is stored as
the code ``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)`` and stands for
``(q - zero) * scale``.

- asymmetric (``sym=False``): the grid spans ``[min(w, 0), max(w, 0)]`` of the
  group: ``scale = (hi - lo) / maxq``, ``zero = round(-lo / scale)``;
- symmetric (``sym=True``): ``scale = max|w| / (2**(bits-1) - 1)`` and
  ``zero = 2**(bits-1)``: the largest weight of the group sits exactly on a
  grid point (never on a rounding tie, as it would with ``2 * max|w| / maxq``),
  and the lowest code ``-2**(bits-1)`` stays free for weights that GPTQ's error
  updates push beyond the fitted range;
- an all-zero group gets ``scale = 1`` (its codes all equal ``zero``).

Rounding is ``torch.round``: half to even (as numpy's ``round``), not half away
from zero. Codes are stored packed (:func:`pack`) as a little-endian bit
stream of ``bits`` bits per code, row-major.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qfair.compress.errors import CompressError

MIN_BITS, MAX_BITS = 2, 8


class GridError(CompressError):
    """Bad grid settings: bits, group size (one line, for the user)."""


def common_group_sizes(widths: list[int]) -> list[int]:
    """The group sizes that divide every width (the divisors of their gcd)."""
    g = 0
    for w in widths:
        g = math.gcd(g, int(w))
    return [d for d in range(1, g + 1) if g % d == 0] if g else []


@dataclass(frozen=True)
class Grid:
    """``bits`` (2..8), ``group_size`` (a positive number of input columns, or -1
    for one group per output row) and ``sym``."""

    bits: int = 4
    group_size: int = -1
    sym: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise GridError(f"bits={self.bits!r}: expected an integer from {MIN_BITS} to {MAX_BITS}")
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or \
                (self.group_size < 1 and self.group_size != -1):
            raise GridError(f"group_size={self.group_size!r}: expected -1 (per channel) or a positive integer")

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def group_width(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    def n_groups(self, in_features: int, layer: str = "a layer") -> int:
        """Groups per row; refuses a group size that does not divide ``in_features``."""
        gw = self.group_width(in_features)
        if in_features % gw:
            sizes = ", ".join(map(str, common_group_sizes([in_features])))
            raise GridError(f"group_size={self.group_size} does not divide the input width of {layer} "
                            f"({in_features}); sizes that would work: -1, {sizes}")
        return in_features // gw

    # -- one group of columns ---------------------------------------------
    def fit(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)`` per row of ``w`` (rows, columns of one group), in ``w``'s dtype."""
        maxq = self.maxq
        if self.sym:
            amax = w.abs().amax(dim=1)
            scale = amax / ((1 << (self.bits - 1)) - 1)
            zero = torch.full_like(scale, float(1 << (self.bits - 1)))
        else:
            lo = w.amin(dim=1).clamp(max=0)
            hi = w.amax(dim=1).clamp(min=0)
            scale = (hi - lo) / maxq
            zero = None
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        if zero is None:
            zero = torch.round(-lo / scale).clamp(0, maxq)
        return scale, zero

    def codes(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Integer codes (uint8) of ``w`` on the grid ``(scale, zero)``, broadcast along the last dim."""
        return torch.clamp(torch.round(w / scale) + zero, 0, self.maxq).to(torch.uint8)

    @staticmethod
    def values(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """What codes stand for: ``(codes - zero) * scale`` in ``scale``'s dtype."""
        return (codes.to(scale.dtype) - zero) * scale

    # -- a whole matrix ----------------------------------------------------
    def fit_matrix(self, w: torch.Tensor, layer: str = "a layer") -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)`` of shape (rows, groups) fitted on ``w`` as it is (round to nearest)."""
        rows, cols = w.shape
        ng = self.n_groups(cols, layer)
        s, z = self.fit(w.reshape(rows * ng, cols // ng))
        return s.reshape(rows, ng), z.reshape(rows, ng)

    def expand(self, per_group: torch.Tensor, in_features: int) -> torch.Tensor:
        """(rows, groups) -> (rows, in_features): each group's value repeated over its columns."""
        return per_group.repeat_interleave(in_features // per_group.shape[1], dim=1)

    def quantize(self, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """Codes (rows, in_features) of ``w`` on the per-group grid (rows, groups)."""
        n = w.shape[1]
        return self.codes(w, self.expand(scale, n), self.expand(zero, n))

    def dequantize(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        n = codes.shape[1]
        return self.values(codes, self.expand(scale, n), self.expand(zero, n))


def bit_stream(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (..., n; values < 2**bits) -> their bits (..., n * bits) as uint8 0/1,
    ``bits`` bits per code, least significant bit first."""
    shifts = torch.arange(bits, dtype=torch.int32)
    return ((codes.to(torch.int32)[..., None] >> shifts) & 1).to(torch.uint8).flatten(-2)


def stream_bytes(stream: torch.Tensor) -> torch.Tensor:
    """Bits (..., 8m) as from :func:`bit_stream` -> bytes (..., m) uint8, the first bit lowest."""
    lead = stream.shape[:-1]
    octets = stream.reshape(*lead, -1, 8).to(torch.int32) << torch.arange(8, dtype=torch.int32)
    return octets.sum(dim=-1).to(torch.uint8)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (any shape, values < 2**bits) -> a flat uint8 bit stream, ``bits`` bits
    per code, least significant bit first, padded with zero bits to whole bytes."""
    stream = bit_stream(codes.reshape(-1), bits)
    return stream_bytes(torch.nn.functional.pad(stream, (0, (-stream.numel()) % 8)))


def unpack(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of :func:`pack`: uint8 codes of ``shape``."""
    n = math.prod(shape)
    if packed.numel() != (n * bits + 7) // 8:
        raise GridError(f"packed codes hold {packed.numel()} bytes; {shape} at {bits} bits needs {(n * bits + 7) // 8}")
    stream = ((packed.to(torch.uint8)[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[: n * bits]
    weights = (torch.ones(bits, dtype=torch.int32) << torch.arange(bits, dtype=torch.int32))
    return (stream.reshape(n, bits).to(torch.int32) * weights).sum(dim=1).to(torch.uint8).reshape(shape)


def packed_nbytes(n_codes: int, bits: int) -> int:
    return (n_codes * bits + 7) // 8

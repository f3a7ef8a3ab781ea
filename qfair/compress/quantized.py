"""A quantized weight matrix: integer codes with their per-group scales and zero points."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qfair.compress.grid import Grid, pack, packed_nbytes, unpack


@dataclass
class QuantizedWeight:
    codes: torch.Tensor   # uint8 (rows, in_features), values 0..2**bits-1
    scale: torch.Tensor   # (rows, groups), the dtype the weights are computed in
    zero: torch.Tensor    # (rows, groups), integers held in scale's dtype
    grid: Grid

    def dequantize(self) -> torch.Tensor:
        """The weights the codes stand for (fake quantization), in ``scale``'s dtype."""
        return self.grid.dequantize(self.codes, self.scale, self.zero)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """What is stored: the packed codes, the scales, and the zero points (uint8;
        omitted for a symmetric grid, whose zero point is fixed)."""
        out = {"codes_packed": pack(self.codes, self.grid.bits), "scale": self.scale.contiguous(),
               "shape": torch.tensor(list(self.codes.shape), dtype=torch.int64)}
        if not self.grid.sym:
            out["zero"] = self.zero.to(torch.uint8).contiguous()
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], grid: Grid) -> QuantizedWeight:
        shape = tuple(int(x) for x in t["shape"].tolist())
        codes = unpack(t["codes_packed"], grid.bits, shape)
        scale = t["scale"]
        if grid.sym:
            zero = torch.full_like(scale, float(1 << (grid.bits - 1)))
        else:
            zero = t["zero"].to(scale.dtype)
        return cls(codes, scale, zero, grid)

    def stored_bytes(self) -> int:
        n = packed_nbytes(self.codes.numel(), self.grid.bits) + self.scale.numel() * self.scale.element_size()
        if not self.grid.sym:
            n += self.zero.numel()
        return n

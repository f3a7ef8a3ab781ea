"""Round to nearest: each weight to the nearest point of its group's grid,
the grid fitted on the weights themselves (no calibration data)."""
from __future__ import annotations

import torch

from qfair.compress.grid import Grid
from qfair.compress.quantized import QuantizedWeight


def rtn_quantize(w: torch.Tensor, grid: Grid, layer: str = "a layer") -> QuantizedWeight:
    scale, zero = grid.fit_matrix(w, layer)
    return QuantizedWeight(grid.quantize(w, scale, zero), scale, zero, grid)

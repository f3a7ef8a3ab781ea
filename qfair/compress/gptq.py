"""GPTQ (Frantar et al., 2022): quantize a layer's weight columns one at a time,
each time moving the rounding error onto the columns not yet quantized through
the inverse Hessian of the layer's reconstruction objective.

Settings:

- ``dampening``: fraction of the mean diagonal of ``H`` added to its diagonal
  before inversion (default 0.01); dead columns as in :mod:`qfair.compress.hessian`;
- ``act_order``: visit columns by decreasing ``diag(H)`` (the inputs with the
  most energy first), then restore the original order;
- groups: a group's scale and zero point are fitted when the first of its
  columns is quantized, from the group's up-to-date weights (errors propagated
  so far included). The groups stay the contiguous runs of ``group_size``
  input columns in the original order, also with ``act_order`` (so the stored
  format never needs a column permutation);
- ``block_size``: columns per lazy update block (128; 1 is the plain
  column-by-column algorithm, same result up to float rounding).

The work is done in the weight's dtype (float32 for a model; float64 in the
tests), the Hessian and its Cholesky factors in float64.
"""
from __future__ import annotations

import torch

from qfair.compress.grid import Grid
from qfair.compress.hessian import inverse_cholesky, prepare
from qfair.compress.quantized import QuantizedWeight
from qfair.compress.solver import ColumnSweep

DEFAULT_DAMPENING = 0.01
DEFAULT_BLOCK_SIZE = 128


class _GridRule:
    """Quantize each visited column on its (lazily fitted) group grid."""

    def __init__(self, grid: Grid, perm: torch.Tensor, rows: int, cols: int, dtype: torch.dtype, layer: str):
        self.grid = grid
        self.perm = perm.tolist()              # Python ints: no tensor indexing per column
        self.inv = torch.argsort(perm)
        self.gw = grid.group_width(cols)
        ng = grid.n_groups(cols, layer)
        # transposed (groups or columns, rows): each visited column reads and writes contiguous memory
        self.scale_t = torch.zeros(ng, rows, dtype=dtype)
        self.zero_t = torch.zeros(ng, rows, dtype=dtype)
        self.fitted = [False] * ng
        self.codes_t = torch.zeros(cols, rows, dtype=dtype)  # the codes as floats; uint8 at the end

    def begin_block(self, sweep: ColumnSweep) -> None:
        pass

    def column(self, sweep: ColumnSweep, j: int, w: torch.Tensor) -> torch.Tensor:
        c = self.perm[j]
        g = c // self.gw
        if not self.fitted[g]:
            members = self.inv[g * self.gw:(g + 1) * self.gw]
            self.scale_t[g], self.zero_t[g] = self.grid.fit(sweep.current(members))
            self.fitted[g] = True
        s, z = self.scale_t[g], self.zero_t[g]
        # Grid.codes and Grid.values, the same operations done in place
        q = torch.div(w, s)
        q.round_().add_(z).clamp_(0, self.grid.maxq)
        self.codes_t[c] = q
        return q.sub_(z).mul_(s)

    def result(self) -> QuantizedWeight:
        return QuantizedWeight(self.codes_t.T.to(torch.uint8).contiguous(), self.scale_t.T.contiguous(),
                               self.zero_t.T.contiguous(), self.grid)


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, grid: Grid, *, dampening: float = DEFAULT_DAMPENING,
                  act_order: bool = False, block_size: int = DEFAULT_BLOCK_SIZE,
                  layer: str = "a layer") -> QuantizedWeight:
    """Quantize ``w`` (rows, in_features; not modified) with the Hessian ``h``
    (in_features square, e.g. ``2 X X^T / n``)."""
    rows, cols = w.shape
    grid.n_groups(cols, layer)  # refuse a bad group size before any work
    work = w.detach().clone()
    hd, _ = prepare(h.to(torch.float64), work, dampening)
    if act_order:
        perm = torch.argsort(torch.diagonal(hd), descending=True, stable=True)
    else:
        perm = torch.arange(cols)
    work = work[:, perm].contiguous()
    u = inverse_cholesky(hd[perm][:, perm], layer)
    rule = _GridRule(grid, perm, rows, cols, w.dtype, layer)
    ColumnSweep(work, u, block_size).run(rule)
    return rule.result()

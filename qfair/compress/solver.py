"""The sequential column solver shared by GPTQ and SparseGPT (optimal brain
surgeon, one column at a time, with lazy block updates).

Columns of ``W`` are visited in order. At column ``j`` a :class:`ColumnRule`
replaces the current column ``w`` by ``q`` (a quantized column, or a pruned
one); the error ``e = (w - q) / U_jj`` is then propagated to every later column
``k`` as ``w_k -= e * U_jk``, where ``U`` is the upper Cholesky factor of the
inverse Hessian (:func:`qfair.compress.hessian.inverse_cholesky`). This is the
OBS update with ``H^-1`` restricted to the columns not yet visited, in the
Cholesky form of GPTQ (Frantar et al., 2022).

Lazy block updates: inside a block of ``block_size`` columns the update is
applied at once; columns beyond the block receive the block's accumulated
errors in one matrix product when the block ends. The result equals the
one-column-at-a-time update (``block_size=1``) up to float rounding; a rule
that needs the up-to-date value of a column beyond the block (a group's scale
fitted from columns not yet visited) asks :meth:`ColumnSweep.current`, which
adds the pending updates.
"""
from __future__ import annotations

from typing import Protocol

import torch


class ColumnRule(Protocol):
    def begin_block(self, sweep: ColumnSweep) -> None:
        """Called when a block starts (``sweep.i1``, ``sweep.i2``, ``sweep.block``);
        SparseGPT chooses its mask here."""

    def column(self, sweep: ColumnSweep, j: int, w: torch.Tensor) -> torch.Tensor:
        """The replacement of column ``j`` whose current value is ``w`` (a view
        into the sweep's block: read it, do not modify it)."""


class ColumnSweep:
    """One pass of the solver over ``w`` (modified in place: at the end it holds
    the replaced columns) with the inverse-Hessian factor ``u``.

    The work is done on a transposed copy, so that each column the loop visits
    is contiguous in memory; ``block`` and ``err`` (rows, block columns) are
    views of it that rules may read."""

    def __init__(self, w: torch.Tensor, u: torch.Tensor, block_size: int = 128):
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.w = w
        self.u = u.to(w.dtype)
        self.block_size = block_size
        self.i1 = self.i2 = self.pos = 0
        self.wt = w[:0].T
        self.block = w[:, :0]
        self.err = w[:, :0]

    def run(self, rule: ColumnRule) -> torch.Tensor:
        w, u = self.w, self.u
        n = w.shape[1]
        self.wt = wt = w.T.contiguous()        # (columns, rows)
        for i1 in range(0, n, self.block_size):
            i2 = min(i1 + self.block_size, n)
            self.i1, self.i2, self.pos = i1, i2, i1
            block_t = wt[i1:i2].clone()
            err_t = torch.zeros_like(block_t)
            self.block, self.err = block_t.T, err_t.T
            u1 = u[i1:i2, i1:i2]
            diag = torch.diagonal(u1).tolist()   # Python floats: no 0-d tensor per column
            rule.begin_block(self)
            for k in range(i2 - i1):
                self.pos = i1 + k
                col = block_t[k]
                q = rule.column(self, i1 + k, col)
                torch.div(col - q, diag[k], out=err_t[k])
                # block[:, k+1:] -= e u1[k, k+1:] (product, then difference: addr_ fuses
                # them into one rounding and would change the last bits)
                block_t[k + 1:] -= u1[k, k + 1:, None] * err_t[k]
                block_t[k] = q
            wt[i1:i2] = block_t
            if i2 < n:
                # the product as the untransposed solver computes it (row-major operands)
                wt[i2:] -= (self.err.contiguous() @ u[i1:i2, i2:]).T
        w.copy_(wt.T)
        return w

    def current(self, positions: torch.Tensor) -> torch.Tensor:
        """The up-to-date values (rows, len(positions)) of columns not yet visited
        (positions >= the present column), pending block updates included."""
        out = torch.empty(self.w.shape[0], positions.numel(), dtype=self.w.dtype)
        inside = positions < self.i2
        if bool(inside.any()):
            out[:, inside] = self.block[:, positions[inside] - self.i1]
        if bool((~inside).any()):
            p = positions[~inside]
            out[:, ~inside] = self.wt[p].T - self.err.contiguous() @ self.u[self.i1:self.i2, p]
        return out

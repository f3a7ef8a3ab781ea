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
        """The replacement of column ``j`` whose current value is ``w``."""


class ColumnSweep:
    """One pass of the solver over ``w`` (modified in place: at the end it holds
    the replaced columns) with the inverse-Hessian factor ``u``."""

    def __init__(self, w: torch.Tensor, u: torch.Tensor, block_size: int = 128):
        if block_size < 1:
            raise ValueError("block_size must be positive")
        self.w = w
        self.u = u.to(w.dtype)
        self.block_size = block_size
        self.i1 = self.i2 = self.pos = 0
        self.block = w[:, :0]
        self.err = w[:, :0]

    def run(self, rule: ColumnRule) -> torch.Tensor:
        w, u = self.w, self.u
        n = w.shape[1]
        for i1 in range(0, n, self.block_size):
            i2 = min(i1 + self.block_size, n)
            self.i1, self.i2, self.pos = i1, i2, i1
            self.block = w[:, i1:i2].clone()
            self.err = torch.zeros_like(self.block)
            u1 = u[i1:i2, i1:i2]
            rule.begin_block(self)
            for k in range(i2 - i1):
                self.pos = i1 + k
                col = self.block[:, k].clone()
                q = rule.column(self, i1 + k, col)
                e = (col - q) / u1[k, k]
                self.block[:, k + 1:] -= e[:, None] * u1[k, k + 1:][None, :]
                self.block[:, k] = q
                self.err[:, k] = e
            w[:, i1:i2] = self.block
            if i2 < n:
                w[:, i2:] -= self.err @ u[i1:i2, i2:]
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
            out[:, ~inside] = self.w[:, p] - self.err @ self.u[self.i1:self.i2, p]
        return out

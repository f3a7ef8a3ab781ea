"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can
Be Accurately Pruned in One-Shot"): choose a mask and update the kept weights
so that the layer's output on calibration inputs changes as little as possible.

For one linear layer with inputs X (features × tokens):

- H = 2·X·Xᵀ/n, plus ``dampening`` × mean(diag H) on the diagonal (input
  features that never fire get H_jj = 1 and their weights zeroed);
- U = the upper Cholesky factor of H⁻¹ (so the rows of U carry the OBS
  update for the columns still to come);
- columns are visited in blocks of ``blocksize``; in each block the mask
  prunes the ``floor(s · rows · blocksize)`` lowest w²/U_jj² of the block
  (across all rows; ties to the lower index), or, for N:M, the ``M−N`` lowest
  of each group of M columns in each row; then column by column the pruned
  weights are set to zero and their error (w − q)/U_jj is spread over the
  remaining columns of the block through U's row, and after the block over
  every later column (the lazy batch update).

The Hessian preparation, the Cholesky factor and the blocked column sweep are
those of qfair's GPTQ (:mod:`qfair.compress`); this module adds the pruning
rule and the capture. The Hessians come from one forward pass of the unpruned
float model (the paper prunes block by block on the already-pruned block
outputs; qfair's GPTQ capture does that and could be used here later).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from qfair.pruning import PruningError
from qfair.pruning.forward import hooked_pass
from qfair.pruning.masks import Pattern, n_pruned


def hessians(model: Any, linears: dict[str, Any], batches: Iterable[Any]) -> tuple[dict[str, Any], int]:
    """``({name: Σ x·xᵀ over tokens (float64, CPU)}, tokens)`` for every layer in
    ``linears``; layers that read the same input tensor share one matrix."""
    import torch

    sums: dict[str, Any] = {}
    shared: dict[int, tuple[str, Any]] = {}  # id of an input of this forward -> (layer holding its sum, it)
    owner: dict[str, str] = {}

    def hook(name: str):
        def f(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            # the tensor itself is kept until the forward ends, so its id cannot be reused meanwhile
            first, _ = shared.setdefault(id(x), (name, x))
            if first != name:
                owner[name] = first
                return
            x2 = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64)
            if name not in sums:
                sums[name] = torch.zeros(x2.shape[1], x2.shape[1], dtype=torch.float64)
            sums[name] += x2.T @ x2
        return f

    tokens = hooked_pass(model, linears, batches, hook, before_batch=shared.clear)
    return {n: sums[owner.get(n, n)] for n in linears if owner.get(n, n) in sums}, tokens


class _SparseRule:
    """The column rule of :class:`qfair.compress.solver.ColumnSweep` that prunes:
    the mask of a block is chosen when the block starts (unstructured) or when
    the sweep reaches each group of M columns (N:M), from w²/U_jj²."""

    def __init__(self, sparsity: float | None, pattern: Pattern):
        self.sparsity, self.pattern = sparsity, pattern

    def begin_block(self, sweep: Any) -> None:
        import torch

        self.d2 = torch.diagonal(sweep.u[sweep.i1:sweep.i2, sweep.i1:sweep.i2]) ** 2
        self.prune = torch.zeros(sweep.block.shape, dtype=torch.bool)
        if not self.pattern.structured:
            score = (sweep.block ** 2 / self.d2[None, :]).reshape(-1)
            k = n_pruned(self.sparsity, score.numel())
            self.prune.view(-1)[torch.sort(score, stable=True).indices[:k]] = True

    def column(self, sweep: Any, j: int, w: Any) -> Any:
        import torch

        k, m = j - sweep.i1, self.pattern.m
        if self.pattern.structured and k % m == 0:
            score = sweep.block[:, k:k + m] ** 2 / self.d2[None, k:k + m]
            low = torch.sort(score, dim=1, stable=True).indices[:, :m - self.pattern.n]
            self.prune[:, k:k + m].scatter_(1, low, True)
        q = w.clone()
        q[self.prune[:, k]] = 0.0
        return q


def sparsegpt_weight(weight: Any, xxt: Any, n_tokens: int, sparsity: float | None, pattern: Pattern,
                     blocksize: int = 128, dampening: float = 0.01) -> Any:
    """The pruned and updated weight (same dtype as ``weight``) from ``xxt`` = Σ x·xᵀ
    over ``n_tokens`` calibration tokens (see the module doc). The Hessian
    preparation, the inverse Cholesky factor and the column sweep are qfair's
    GPTQ solver's (:mod:`qfair.compress`); only the rule that replaces each
    column is SparseGPT's."""
    import torch

    from qfair.compress.errors import CompressError
    from qfair.compress.hessian import inverse_cholesky, prepare
    from qfair.compress.solver import ColumnSweep

    w = weight.detach().to("cpu", torch.float64).clone()
    cols = w.shape[1]
    if pattern.structured and cols % pattern.m:
        raise PruningError(f"pattern {pattern} needs an input width that is a multiple of {pattern.m}, got {cols}")
    if pattern.structured and blocksize % pattern.m:
        raise PruningError(f"pattern {pattern} needs a blocksize that is a multiple of {pattern.m}")
    if not pattern.structured and sparsity is None:
        raise PruningError("unstructured pruning needs a sparsity")
    if n_tokens < 1:
        raise PruningError("SparseGPT needs calibration tokens")
    h, _ = prepare(2.0 * xxt.to(torch.float64) / n_tokens, w, dampening)
    try:
        u = inverse_cholesky(h)
    except CompressError as e:
        raise PruningError(str(e)) from None
    return ColumnSweep(w, u, blocksize).run(_SparseRule(sparsity, pattern)).to(weight.dtype)

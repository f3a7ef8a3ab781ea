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

This is qfair's own small solver, in float64; it should later share the
Hessian / Cholesky / blocked-update machinery with qfair's GPTQ. The
Hessians come from one forward pass of the unpruned float model (the paper
prunes block by block on the already-pruned block outputs).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from qfair.pruning import PruningError
from qfair.pruning.masks import Pattern, n_pruned


def hessians(model: Any, linears: dict[str, Any], batches: Iterable[Any]) -> tuple[dict[str, Any], int]:
    """``({name: Σ x·xᵀ over tokens (float64, CPU)}, tokens)`` for every layer in
    ``linears``; layers that read the same input tensor share one matrix."""
    import torch

    sums: dict[str, Any] = {}
    hooks = []
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

    for n, m in linears.items():
        hooks.append(m.register_forward_pre_hook(hook(n)))
    tokens = 0
    dev = model.get_input_embeddings().weight.device
    try:
        with torch.inference_mode():
            for ids in batches:
                shared.clear()
                model(input_ids=ids.to(dev), use_cache=False)
                tokens += int(ids.numel())
    finally:
        for h in hooks:
            h.remove()
    return {n: sums[owner.get(n, n)] for n in linears if owner.get(n, n) in sums}, tokens


def sparsegpt_weight(weight: Any, xxt: Any, n_tokens: int, sparsity: float | None, pattern: Pattern,
                     blocksize: int = 128, dampening: float = 0.01) -> Any:
    """The pruned and updated weight (same dtype as ``weight``) from ``xxt`` = Σ x·xᵀ
    over ``n_tokens`` calibration tokens (see the module doc)."""
    import torch

    w = weight.detach().to("cpu", torch.float64).clone()
    rows, cols = w.shape
    if pattern.structured and cols % pattern.m:
        raise PruningError(f"pattern {pattern} needs an input width that is a multiple of {pattern.m}, got {cols}")
    if pattern.structured and blocksize % pattern.m:
        raise PruningError(f"pattern {pattern} needs a blocksize that is a multiple of {pattern.m}")
    if not pattern.structured and sparsity is None:
        raise PruningError("unstructured pruning needs a sparsity")
    if n_tokens < 1:
        raise PruningError("SparseGPT needs calibration tokens")
    h = 2.0 * xxt.to(torch.float64) / n_tokens
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += dampening * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=torch.float64)
    try:
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:
        raise PruningError("the calibration Hessian is not positive definite; raise dampening=") from None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        d = torch.diag(u1)
        prune = torch.zeros_like(w1, dtype=torch.bool)
        if not pattern.structured:
            score = (w1 ** 2 / d[None, :] ** 2).reshape(-1)
            k = n_pruned(sparsity, score.numel())
            prune.view(-1)[torch.sort(score, stable=True).indices[:k]] = True
        for i in range(i2 - i1):
            if pattern.structured and i % pattern.m == 0:
                score = w1[:, i:i + pattern.m] ** 2 / d[None, i:i + pattern.m] ** 2
                low = torch.sort(score, dim=1, stable=True).indices[:, :pattern.m - pattern.n]
                prune[:, i:i + pattern.m].scatter_(1, low, True)
            col = w1[:, i]
            q = col.clone()
            q[prune[:, i]] = 0.0
            q1[:, i] = q
            e = (col - q) / u1[i, i]
            w1[:, i:] -= e[:, None] @ u1[i, i:][None, :]
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w.to(weight.dtype)

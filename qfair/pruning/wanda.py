"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"):
score each weight by |W_ij| · ‖X_j‖₂, where ‖X_j‖₂ is the L2 norm of input
feature j over every calibration token, and prune the lowest scores of each
output row (or of each N:M group).

The input norms are captured in one forward pass of the *unpruned* model over
the calibration texts (a forward pre-hook on each pruned linear layer sums the
squares of its inputs in float64). The paper's reference code instead prunes
block by block and feeds each block the outputs of the already-pruned blocks
before it; qfair's single pass is simpler and is what is computed here.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from qfair.pruning.forward import hooked_pass


def input_norms(model: Any, linears: dict[str, Any], batches: Iterable[Any]) -> tuple[dict[str, Any], int]:
    """``({name: ‖X_j‖₂ per input feature (float64, CPU)}, tokens seen)`` for the
    layers in ``linears``, from forwarding each ``input_ids`` tensor in
    ``batches`` (shape (1, T): one text at a time, so no padding is counted)."""
    import torch

    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}

    def hook(name: str):
        def f(_mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            sums[name] += (x * x).sum(0).cpu()
        return f

    tokens = hooked_pass(model, linears, batches, hook)
    return {n: s.sqrt() for n, s in sums.items()}, tokens


def wanda_scores(weight: Any, norm: Any) -> Any:
    """|W_ij| · ‖X_j‖₂ in float64 (``norm`` has one entry per input feature)."""
    import torch

    return weight.detach().to(torch.float64).abs() * norm.to(weight.device, torch.float64)[None, :]

"""Pruning individual weights of a model's linear layers, in place.

``method``: ``magnitude`` (score |W|, unstructured masks compare the whole
layer) or ``wanda`` (score |W|·‖X‖₂, unstructured masks compare each output
row). N:M patterns compare groups of M consecutive inputs of a row for both.
See :mod:`qfair.pruning.masks` for the exact rules, ties included.
"""
from __future__ import annotations

from typing import Any

from qfair.pruning import PruningError
from qfair.pruning.masks import Pattern, apply_mask, magnitude_scores, mask_for
from qfair.pruning.wanda import wanda_scores

METHODS = ("magnitude", "wanda")


def layer_mask(method: str, weight: Any, sparsity: float | None, pattern: Pattern, norm: Any = None) -> Any:
    """The keep-mask of one weight matrix."""
    if method == "magnitude":
        return mask_for(magnitude_scores(weight), sparsity, pattern, per_row=False)
    if method == "wanda":
        if norm is None:
            raise PruningError("wanda needs the layer's input norms")
        return mask_for(wanda_scores(weight, norm), sparsity, pattern, per_row=True)
    raise PruningError(f"unknown pruning method {method!r}; expected one of {', '.join(METHODS)}")


def prune_linears(linears: dict[str, Any], method: str, sparsity: float | None, pattern: Pattern,
                  norms: dict[str, Any] | None = None) -> dict[str, int]:
    """Prune every layer of ``linears`` in place; returns the weights each mask
    pruned (``{name: count}``)."""
    pruned = {}
    for name, lin in linears.items():
        keep = layer_mask(method, lin.weight, sparsity, pattern, None if norms is None else norms[name])
        apply_mask(lin, keep)
        pruned[name] = int((~keep).sum())
    return pruned

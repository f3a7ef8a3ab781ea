"""Pruning masks: which weights to zero, given a score per weight.

A mask is a bool tensor of the weight's shape, True where the weight is *kept*.

Patterns (``pattern=``):

- ``unstructured``: the ``floor(s · n)`` lowest scores of the comparison group
  are pruned. Magnitude pruning compares the whole layer (every weight of one
  weight matrix); Wanda compares each output row (row *i* of W, i.e. the
  weights feeding output feature *i*), as in its paper.
- ``N:M``: along the input dimension, every run of M consecutive weights of a
  row (columns ``gM .. gM+M-1``) keeps its N highest scores; the sparsity is
  exactly ``(M-N)/M``. The input width must be a multiple of M.

Ties: scores are sorted stably, so among equal scores the weight with the
lower index (flat row-major index for a layer, column index within a row or a
group) is pruned first. Scores are compared in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qfair.pruning import PruningError

UNSTRUCTURED = "unstructured"


@dataclass(frozen=True)
class Pattern:
    """``unstructured`` (n = m = 0) or N:M (keep ``n`` of every ``m`` consecutive inputs)."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float | None:
        """The sparsity an N:M pattern implies (None for unstructured)."""
        return (self.m - self.n) / self.m if self.m else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else UNSTRUCTURED


def parse_pattern(text: str) -> Pattern:
    """``unstructured`` or ``N:M`` with 1 <= N < M (e.g. 2:4, 4:8); ValueError otherwise."""
    s = text.strip().lower()
    if s == UNSTRUCTURED:
        return Pattern()
    n, sep, m = s.partition(":")
    try:
        if not sep:
            raise ValueError
        pn, pm = int(n), int(m)
    except ValueError:
        raise ValueError("expected unstructured or N:M such as 2:4 or 4:8") from None
    if not 1 <= pn < pm:
        raise ValueError("an N:M pattern keeps N of every M weights: expected 1 <= N < M")
    return Pattern(pn, pm)


def n_pruned(sparsity: float, n: int) -> int:
    """How many of ``n`` weights a sparsity prunes: ``floor(sparsity · n)``."""
    import math

    return int(math.floor(sparsity * n + 1e-9))


def _lowest(scores: Any, k: int) -> Any:
    """Indices (along the last dim) of the ``k`` lowest scores, ties to the lower index."""
    import torch

    order = torch.sort(scores, dim=-1, stable=True).indices
    return order[..., :k]


def layer_mask(scores: Any, sparsity: float) -> Any:
    """Unstructured mask comparing every weight of the layer: the
    ``floor(sparsity · numel)`` lowest scores are pruned."""
    import torch

    flat = scores.reshape(-1).to(torch.float64)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[_lowest(flat, n_pruned(sparsity, flat.numel()))] = False
    return keep.reshape(scores.shape)


def row_mask(scores: Any, sparsity: float) -> Any:
    """Unstructured mask comparing each output row on its own: in every row the
    ``floor(sparsity · in_features)`` lowest scores are pruned."""
    import torch

    s = scores.to(torch.float64)
    keep = torch.ones(s.shape, dtype=torch.bool, device=s.device)
    keep.scatter_(1, _lowest(s, n_pruned(sparsity, s.shape[1])), False)
    return keep


def nm_mask(scores: Any, pattern: Pattern) -> Any:
    """N:M mask: each run of M consecutive inputs of a row keeps its N highest scores."""
    import torch

    rows, cols = scores.shape
    if cols % pattern.m:
        raise PruningError(f"pattern {pattern} needs an input width that is a multiple of {pattern.m}, got {cols}")
    g = scores.to(torch.float64).reshape(rows, cols // pattern.m, pattern.m)
    keep = torch.ones(g.shape, dtype=torch.bool, device=g.device)
    keep.scatter_(2, _lowest(g, pattern.m - pattern.n), False)
    return keep.reshape(rows, cols)


def mask_for(scores: Any, sparsity: float | None, pattern: Pattern, per_row: bool) -> Any:
    """The mask of one layer: N:M when ``pattern`` is structured, else
    unstructured per row (``per_row``) or per layer."""
    if pattern.structured:
        return nm_mask(scores, pattern)
    if sparsity is None:
        raise PruningError("unstructured pruning needs a sparsity")
    return row_mask(scores, sparsity) if per_row else layer_mask(scores, sparsity)


def magnitude_scores(weight: Any) -> Any:
    """|W| in float64."""
    import torch

    return weight.detach().to(torch.float64).abs()


def apply_mask(linear: Any, keep: Any) -> None:
    """Zero the pruned weights of ``linear`` in place (the bias is untouched)."""
    import torch

    with torch.no_grad():
        linear.weight.mul_(keep.to(linear.weight.dtype))
